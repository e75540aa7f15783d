//! One spooled call: a [`CallRecord`] as bytes and back, losslessly for everything
//! `span::assemble` reads. Times that are `Instant`s become offsets from `started_at` (a
//! monotonic clock means nothing in another process); on decode they are laid out again from
//! a fresh `Instant`, so every duration and TTFT the span builder derives is the same.

use std::time::{Duration, Instant, UNIX_EPOCH};

use bytes::Bytes;
use serde_json::{Map, Value};

use crate::{
    propagate::{TraceContext, W3cContext},
    tap::{CallRecord, Captured, End},
    varint::{Dec, Enc},
};

/// `Captured::error_kind` values are `&'static str`; these are the ones the proxy sets.
const ERROR_KINDS: [&str; 1] = [crate::idle::IDLE_TIMEOUT_KIND];

/// Appends `record` to `out`.
pub(super) fn encode(record: &CallRecord, out: &mut Enc) {
    let base = record.started_at;
    encode_ctx(&record.ctx, out);
    out.str(&record.method);
    out.str(&record.path);
    out.str(&record.upstream_path);
    out.str(&record.upstream);
    out.opt_str(record.provider_hint.as_deref());
    out.opt_str(record.request_content_type.as_deref());
    out.opt_str(record.request_content_encoding.as_deref());
    out.opt_str(record.response_content_type.as_deref());
    out.opt_str(record.response_content_encoding.as_deref());
    out.opt_u64(record.status.map(u64::from));
    let wall = record
        .started
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    out.u64(u64::try_from(wall.as_nanos()).unwrap_or(u64::MAX));
    out.opt_u64(record.head_at.map(|t| offset(base, t)));
    out.u64(offset(base, record.ended_at));
    for side in [&record.request, &record.response] {
        match side {
            None => out.u8(0),
            Some(c) => {
                out.u8(1);
                encode_captured(c, base, out);
            }
        }
    }
    match &record.proxy_error {
        None => out.u8(0),
        Some((kind, message)) => {
            out.u8(1);
            out.str(kind);
            out.str(message);
        }
    }
}

/// Reads one record that [`encode`] wrote; `None` when the bytes are truncated or malformed.
pub(super) fn decode(bytes: &[u8]) -> Option<CallRecord> {
    let mut d = Dec::new(bytes);
    let base = Instant::now();
    let at = |nanos: u64| base + Duration::from_nanos(nanos);
    let ctx = decode_ctx(&mut d)?;
    let method = d.string()?;
    let path = d.string()?;
    let upstream_path = d.string()?;
    let upstream = d.string()?;
    let provider_hint = d.opt_string()?;
    let request_content_type = d.opt_string()?;
    let request_content_encoding = d.opt_string()?;
    let response_content_type = d.opt_string()?;
    let response_content_encoding = d.opt_string()?;
    let status = d.opt(Dec::u64)?.map(u16::try_from).transpose().ok()?;
    let started = UNIX_EPOCH.checked_add(Duration::from_nanos(d.u64()?))?;
    let head_at = d.opt(Dec::u64)?.map(at);
    let ended_at = at(d.u64()?);
    let request = d.opt(|d| decode_captured(d, base))?;
    let response = d.opt(|d| decode_captured(d, base))?;
    let proxy_error = d.opt(|d| Some((d.string()?, d.string()?)))?;
    if !d.rest().is_empty() {
        return None;
    }
    Some(CallRecord {
        ctx,
        method,
        path,
        upstream_path,
        upstream,
        provider_hint,
        request_content_type,
        request_content_encoding,
        response_content_type,
        response_content_encoding,
        status,
        started,
        started_at: base,
        head_at,
        ended_at,
        request,
        response,
        proxy_error,
    })
}

/// Nanoseconds from `base` to `t` (0 when `t` is earlier).
fn offset(base: Instant, t: Instant) -> u64 {
    u64::try_from(t.saturating_duration_since(base).as_nanos()).unwrap_or(u64::MAX)
}

fn encode_ctx(ctx: &TraceContext, out: &mut Enc) {
    out.str(&ctx.trace_id);
    out.str(&ctx.span_id);
    out.opt_str(ctx.parent_span_id.as_deref());
    out.opt_str(ctx.span_name.as_deref());
    out.opt_str(ctx.session_id.as_deref());
    out.opt_str(ctx.user_id.as_deref());
    out.strs(ctx.tags.iter());
    if ctx.metadata.is_empty() {
        out.u8(0);
    } else {
        out.u8(1);
        // Header-derived metadata is small; JSON keeps its values' types.
        out.str(&Value::Object(ctx.metadata.clone()).to_string());
    }
    match &ctx.w3c {
        None => out.u8(0),
        Some(w) => {
            out.u8(1);
            out.str(&w.trace_id);
            out.str(&w.parent_id);
            out.str(&w.flags);
        }
    }
}

fn decode_ctx(d: &mut Dec<'_>) -> Option<TraceContext> {
    let trace_id = d.string()?;
    let span_id = d.string()?;
    let parent_span_id = d.opt_string()?;
    let span_name = d.opt_string()?;
    let session_id = d.opt_string()?;
    let user_id = d.opt_string()?;
    let tags = d.string_list()?;
    let metadata = match d.opt(Dec::str)? {
        None => Map::new(),
        Some(json) => match serde_json::from_str(json).ok()? {
            Value::Object(map) => map,
            _ => return None,
        },
    };
    let w3c = d.opt(|d| {
        Some(W3cContext {
            trace_id: d.string()?,
            parent_id: d.string()?,
            flags: d.string()?,
        })
    })?;
    Some(TraceContext {
        trace_id,
        span_id,
        parent_span_id,
        span_name,
        session_id,
        user_id,
        tags,
        metadata,
        w3c,
    })
}

fn encode_captured(c: &Captured, base: Instant, out: &mut Enc) {
    out.u64(c.kept as u64);
    for chunk in &c.chunks {
        out.raw(chunk);
    }
    out.u64(c.seen);
    out.u64(u64::from(c.frames));
    out.bool(c.truncated);
    out.opt_u64(c.first_byte_at.map(|t| offset(base, t)));
    // Marks as deltas: both the byte count and the time only grow.
    out.u64(c.marks.len() as u64);
    let (mut seen, mut nanos) = (0u64, 0u64);
    for &(s, t) in &c.marks {
        let t = offset(base, t);
        out.u64(s.wrapping_sub(seen));
        out.u64(t.wrapping_sub(nanos));
        (seen, nanos) = (s, t);
    }
    out.opt_u64(c.end.map(|e| match e {
        End::Complete => 0,
        End::Error => 1,
        End::Cancelled => 2,
    }));
    out.opt_str(c.error.as_deref());
    out.opt_str(c.error_kind);
}

fn decode_captured(d: &mut Dec<'_>, base: Instant) -> Option<Captured> {
    let at = |nanos: u64| base + Duration::from_nanos(nanos);
    let kept = usize::try_from(d.u64()?).ok()?;
    let body = d.take(kept)?;
    let mut c = Captured::default();
    if !body.is_empty() {
        c.chunks.push(Bytes::copy_from_slice(body));
    }
    c.kept = kept;
    c.seen = d.u64()?;
    c.frames = u32::try_from(d.u64()?).ok()?;
    c.truncated = d.bool()?;
    c.first_byte_at = d.opt(Dec::u64)?.map(at);
    let n = d.u64()?;
    // Each mark takes at least two bytes: a count beyond what is left is corrupt.
    if n > d.rest().len() as u64 {
        return None;
    }
    let (mut seen, mut nanos) = (0u64, 0u64);
    c.marks.reserve_exact(usize::try_from(n).ok()?);
    for _ in 0..n {
        seen = seen.wrapping_add(d.u64()?);
        nanos = nanos.wrapping_add(d.u64()?);
        c.marks.push((seen, at(nanos)));
    }
    c.end = match d.opt(Dec::u8)? {
        None => None,
        Some(0) => Some(End::Complete),
        Some(1) => Some(End::Error),
        Some(2) => Some(End::Cancelled),
        Some(_) => return None,
    };
    c.error = d.opt_string()?;
    c.error_kind = d
        .opt(Dec::str)?
        .and_then(|k| ERROR_KINDS.into_iter().find(|known| *known == k));
    Some(c)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    fn captured(base: Instant, body: &[&[u8]], end: End) -> Captured {
        let mut c = Captured::default();
        let mut seen = 0u64;
        for (i, part) in body.iter().enumerate() {
            c.chunks.push(Bytes::copy_from_slice(part));
            c.kept += part.len();
            seen += part.len() as u64;
            c.marks
                .push((seen, base + Duration::from_millis(10 * (i as u64 + 1))));
        }
        c.seen = seen + 7;
        c.frames = body.len() as u32;
        c.truncated = true;
        c.first_byte_at = Some(base + Duration::from_millis(10));
        c.end = Some(end);
        c
    }

    pub(in crate::spool) fn record() -> CallRecord {
        let base = Instant::now();
        let mut metadata = Map::new();
        metadata.insert("team".into(), Value::String("search".into()));
        metadata.insert("n".into(), Value::from(3));
        let mut response = captured(
            base,
            &[b"data: {\"a\":1}\n\n", b"data: [DONE]\n\n"],
            End::Error,
        );
        response.error = Some("idle".into());
        response.error_kind = Some(crate::idle::IDLE_TIMEOUT_KIND);
        CallRecord {
            ctx: TraceContext {
                trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
                span_id: "00f067aa0ba902b7".into(),
                parent_span_id: Some("1111111111111111".into()),
                span_name: Some("plan".into()),
                session_id: Some("s-1".into()),
                user_id: None,
                tags: vec!["a".into(), "b".into()],
                metadata,
                w3c: Some(W3cContext {
                    trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
                    parent_id: "1111111111111111".into(),
                    flags: "01".into(),
                }),
            },
            method: "POST".into(),
            path: "/v1/chat/completions?x=1".into(),
            upstream_path: "/v1/chat/completions".into(),
            upstream: "http://127.0.0.1:9".into(),
            provider_hint: Some("openai".into()),
            request_content_type: Some("application/json".into()),
            request_content_encoding: None,
            response_content_type: Some("text/event-stream".into()),
            response_content_encoding: Some("gzip".into()),
            status: Some(200),
            started: UNIX_EPOCH + Duration::from_nanos(1_764_000_000_123_456_789),
            started_at: base,
            head_at: Some(base + Duration::from_millis(5)),
            ended_at: base + Duration::from_millis(25),
            request: Some(captured(base, &[b"{\"model\":\"m\"}"], End::Complete)),
            response: Some(response),
            proxy_error: Some(("upstream_timeout".into(), "slow".into())),
        }
    }

    fn roundtrip(r: &CallRecord) -> CallRecord {
        let mut enc = Enc::with_capacity(256);
        encode(r, &mut enc);
        decode(&enc.0).expect("a record it wrote decodes")
    }

    #[test]
    fn every_field_survives_the_round_trip() {
        let r = record();
        let back = roundtrip(&r);
        assert_eq!(back.ctx, r.ctx);
        assert_eq!(
            (
                &back.method,
                &back.path,
                &back.upstream_path,
                &back.upstream
            ),
            (&r.method, &r.path, &r.upstream_path, &r.upstream)
        );
        assert_eq!(back.provider_hint, r.provider_hint);
        assert_eq!(back.request_content_type, r.request_content_type);
        assert_eq!(back.request_content_encoding, r.request_content_encoding);
        assert_eq!(back.response_content_type, r.response_content_type);
        assert_eq!(back.response_content_encoding, r.response_content_encoding);
        assert_eq!(back.status, r.status);
        assert_eq!(back.started, r.started);
        assert_eq!(back.proxy_error, r.proxy_error);
        let since = |t: Instant, base: Instant| t.duration_since(base);
        assert_eq!(
            back.head_at.map(|t| since(t, back.started_at)),
            r.head_at.map(|t| since(t, r.started_at))
        );
        assert_eq!(
            since(back.ended_at, back.started_at),
            since(r.ended_at, r.started_at)
        );
        for (b, o) in [(&back.request, &r.request), (&back.response, &r.response)] {
            let (b, o) = (b.as_ref().unwrap(), o.as_ref().unwrap());
            assert_eq!(b.bytes(), o.bytes());
            assert_eq!((b.kept, b.seen, b.frames), (o.kept, o.seen, o.frames));
            assert_eq!(
                (b.truncated, b.end, &b.error),
                (o.truncated, o.end, &o.error)
            );
            assert_eq!(b.error_kind, o.error_kind);
            let marks = |c: &Captured, base: Instant| -> Vec<(u64, Duration)> {
                c.marks.iter().map(|&(s, t)| (s, since(t, base))).collect()
            };
            assert_eq!(marks(b, back.started_at), marks(o, r.started_at));
            assert_eq!(
                b.first_byte_at.map(|t| since(t, back.started_at)),
                o.first_byte_at.map(|t| since(t, r.started_at))
            );
        }
    }

    #[test]
    fn a_record_without_bodies_or_options_round_trips() {
        let mut r = record();
        r.request = None;
        r.response = Some(Captured::ended(End::Cancelled));
        r.ctx.metadata = Map::new();
        r.ctx.w3c = None;
        r.head_at = None;
        r.proxy_error = None;
        let back = roundtrip(&r);
        assert!(back.request.is_none());
        let rsp = back.response.unwrap();
        assert_eq!(rsp.end, Some(End::Cancelled));
        assert!(rsp.chunks.is_empty() && rsp.marks.is_empty());
        assert_eq!(back.ctx, r.ctx);
        assert!(back.head_at.is_none() && back.proxy_error.is_none());
    }

    #[test]
    fn truncated_or_padded_bytes_do_not_decode() {
        let mut enc = Enc::with_capacity(256);
        encode(&record(), &mut enc);
        let bytes = enc.0;
        for cut in [0, 1, bytes.len() / 2, bytes.len() - 1] {
            assert!(decode(&bytes[..cut]).is_none(), "cut at {cut}");
        }
        let mut padded = bytes.clone();
        padded.push(0);
        assert!(decode(&padded).is_none(), "trailing bytes are refused");
    }
}

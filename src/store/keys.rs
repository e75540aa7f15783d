//! Key layout: one-byte prefixes per key space and the builders / parsers of every key. The
//! byte order of these keys is the query plan.

use super::*;

pub(super) const P_SPAN: u8 = b's';
pub(super) const P_SPAN_ID: u8 = b'i';
pub(super) const P_SUMMARY: u8 = b'u';
pub(super) const P_TIME: u8 = b't';
pub(super) const P_INDEX: u8 = b'x';
pub(super) const P_CALL: u8 = b'l';
pub(super) const P_TERM: u8 = b'w';
pub(super) const P_JOURNAL: u8 = b'j';

pub(super) const F_STATUS: u8 = b's';
pub(super) const F_MODEL: u8 = b'm';
pub(super) const F_SESSION: u8 = b'e';
pub(super) const F_USER: u8 = b'u';
pub(super) const F_TAG: u8 = b'g';

/// The key range of one newest-first index (`t`, or one `x` value given as `prefix`) holding
/// the traces that started in `[since, until)`, strictly after `cursor`; `None` when empty.
pub(super) fn index_window(
    prefix: &[u8],
    since: Option<Timestamp>,
    until: Option<Timestamp>,
    cursor: Option<&Cursor>,
) -> Option<(Vec<u8>, Vec<u8>)> {
    // start < until  ⇔  inv(start) ≥ inv(until) + 1.
    let mut lower = prefix.to_vec();
    if let Some(until) = until {
        if until.micros() == 0 {
            return None;
        }
        lower.extend_from_slice(&(u64::MAX - until.micros() + 1).to_be_bytes());
    }
    // Strictly after the cursor: the smallest key above it (no trace id contains 0x00).
    if let Some(c) = cursor {
        let mut after = prefix.to_vec();
        after.extend_from_slice(&inv(c.start_us).to_be_bytes());
        after.extend_from_slice(c.trace_id.as_bytes());
        after.push(0);
        lower = lower.max(after);
    }
    // start ≥ since  ⇔  inv(start) ≤ inv(since); trace id bytes are ASCII, below 0xFF.
    let mut upper = prefix.to_vec();
    upper.extend_from_slice(&inv(since.map_or(0, Timestamp::micros)).to_be_bytes());
    upper.push(0xFF);
    (lower < upper).then_some((lower, upper))
}

pub(super) fn inv(t: u64) -> u64 {
    u64::MAX - t
}

/// `s` trace_id 0x00 — every span of the trace, in start order.
pub(super) fn span_prefix(trace_id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(2 + trace_id.len());
    key.push(P_SPAN);
    key.extend_from_slice(trace_id.as_bytes());
    key.push(0);
    key
}

pub(super) fn span_key(trace_id: &str, start_us: u64, span_id: &str) -> Vec<u8> {
    let mut key = span_prefix(trace_id);
    key.extend_from_slice(&start_us.to_be_bytes());
    key.extend_from_slice(span_id.as_bytes());
    key
}

pub(super) fn span_id_key(span_id: &str) -> Vec<u8> {
    let mut key = vec![P_SPAN_ID];
    key.extend_from_slice(span_id.as_bytes());
    key
}

pub(super) fn span_id_value(trace_id: &str, start_us: u64) -> Vec<u8> {
    let mut value = trace_id.as_bytes().to_vec();
    value.push(0);
    value.extend_from_slice(&start_us.to_be_bytes());
    value
}

pub(super) fn summary_key(trace_id: &str) -> Vec<u8> {
    let mut key = vec![P_SUMMARY];
    key.extend_from_slice(trace_id.as_bytes());
    key
}

/// `l` start_us(be) trace_id 0x00 span_id: start first so stats scan a time range; both ids so
/// every (trace, span) pair has its own record.
pub(super) fn call_key(start_us: u64, trace_id: &str, span_id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(10 + trace_id.len() + span_id.len());
    key.push(P_CALL);
    key.extend_from_slice(&start_us.to_be_bytes());
    key.extend_from_slice(trace_id.as_bytes());
    key.push(0);
    key.extend_from_slice(span_id.as_bytes());
    key
}

/// `x` field escaped(value) 0x00: all traces with this value, newest first.
pub(super) fn index_prefix(field: u8, value: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(3 + value.len());
    key.push(P_INDEX);
    key.push(field);
    for &b in value.as_bytes() {
        match b {
            0 => key.extend_from_slice(&[1, 1]),
            1 => key.extend_from_slice(&[1, 2]),
            b => key.push(b),
        }
    }
    key.push(0);
    key
}

/// inv(start)(be) ++ trace_id, the tail of every `t` and `x` key → (start, trace_id).
pub(super) fn parse_position(tail: &[u8]) -> Option<(u64, &str)> {
    let (start, id) = parse_start_and_id(tail)?;
    Some((inv(start), id))
}

/// u64(be) ++ id.
pub(super) fn parse_start_and_id(tail: &[u8]) -> Option<(u64, &str)> {
    let (n, id) = tail.split_at_checked(8)?;
    let id = std::str::from_utf8(id).ok().filter(|id| !id.is_empty())?;
    Some((u64::from_be_bytes(n.try_into().ok()?), id))
}

/// `w` term 0x00: the posting blocks of this full-text term (see `postings`), newest first.
/// Terms are runs of letters and digits (see `search`), so they never contain 0x00.
pub(super) fn term_prefix(term: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(2 + term.len());
    key.push(P_TERM);
    key.extend_from_slice(term.as_bytes());
    key.push(0);
    key
}

//! Trace context: which trace and parent a proxied call belongs to, read from the app's headers.
//!
//! Owns the SPEC's propagation rules (`x-tracer-trace-id` > `traceparent` > fresh), the hygiene of
//! `x-tracer-*` headers (never forwarded) and the response ID headers. Pure: no I/O.

use std::{
    num::NonZeroU64,
    sync::{
        atomic::{AtomicU64, Ordering},
        LazyLock,
    },
};

use http::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Map, Value};

pub const X_TRACER_PREFIX: &str = "x-tracer-";
pub const TRACE_ID: HeaderName = HeaderName::from_static("x-tracer-trace-id");
pub const SPAN_ID: HeaderName = HeaderName::from_static("x-tracer-span-id");
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

/// The first value of each propagation header, found in one pass.
#[derive(Default)]
struct Seen<'a> {
    traceparent: Option<&'a HeaderValue>,
    trace_id: Option<&'a HeaderValue>,
    parent_span_id: Option<&'a HeaderValue>,
    span_name: Option<&'a HeaderValue>,
    session_id: Option<&'a HeaderValue>,
    user_id: Option<&'a HeaderValue>,
    tags: Option<&'a HeaderValue>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct W3cContext {
    pub trace_id: String,
    pub parent_id: String,
    pub flags: String,
}

impl TraceContext {
    /// Reads the app's headers. Invalid values are ignored (never an error to the app).
    ///
    /// One pass over the headers: most requests carry no `x-tracer-*` header at all, and a
    /// pass with a prefix test per name is cheaper than six hashed lookups.
    pub fn extract(headers: &HeaderMap) -> Self {
        let mut seen = Seen::default();
        let mut metadata = Map::new();
        for (name, value) in headers {
            let name = name.as_str();
            if name == TRACEPARENT.as_str() {
                seen.traceparent.get_or_insert(value);
                continue;
            }
            let Some(key) = name.strip_prefix(X_TRACER_PREFIX) else {
                continue;
            };
            let slot = match key {
                "trace-id" => &mut seen.trace_id,
                "parent-span-id" => &mut seen.parent_span_id,
                "span-name" => &mut seen.span_name,
                "session-id" => &mut seen.session_id,
                "user-id" => &mut seen.user_id,
                "tags" => &mut seen.tags,
                _ => {
                    let Some(key) = name.strip_prefix(META_PREFIX) else {
                        continue;
                    };
                    if key.is_empty() || metadata.len() >= MAX_ENTRIES {
                        continue;
                    }
                    if let Ok(v) = value.to_str() {
                        metadata
                            .insert(key.to_string(), Value::String(truncate(v.trim(), MAX_TEXT)));
                    }
                    continue;
                }
            };
            // `HeaderMap::get` semantics: the first value of a name counts.
            slot.get_or_insert(value);
        }
        let text = |v: Option<&HeaderValue>| -> Option<String> {
            let v = v?.to_str().ok()?.trim();
            (!v.is_empty()).then(|| truncate(v, MAX_TEXT))
        };
        let w3c = seen
            .traceparent
            .and_then(|v| v.to_str().ok())
            .and_then(parse_traceparent);
        let explicit = text(seen.trace_id).filter(|id| crate::span::is_valid_id(id));
        let explicit_parent = text(seen.parent_span_id).filter(|id| crate::span::is_valid_id(id));

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

        let tags = text(seen.tags)
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

        Self {
            trace_id,
            span_id: new_span_id(),
            parent_span_id,
            span_name: text(seen.span_name),
            session_id: text(seen.session_id),
            user_id: text(seen.user_id),
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
    // Usually there are none: one scan of the names, no allocation.
    if !headers
        .keys()
        .any(|n| n.as_str().starts_with(X_TRACER_PREFIX))
    {
        return;
    }
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

/// 32 lowercase hex chars, W3C-compatible (never all zeros): the milliseconds since the Unix
/// epoch in the first 12 (48 bits, as in a UUIDv7; AWS X-Ray ids likewise start with the time),
/// then 80 random bits. The ids stay unique (80 random bits per millisecond), and the store's
/// trace-keyed records (spans, summaries, the id's posting) of the traces the proxy starts land
/// next to each other at the end of their key ranges instead of at random places, where each
/// write read a leaf back from disk (bench/RESULTS.md, session 16).
pub fn new_trace_id() -> String {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    new_trace_id_at(millis)
}

/// [`new_trace_id`] for a given time in milliseconds since the Unix epoch.
fn new_trace_id_at(millis: u64) -> String {
    time_first_trace_id(millis, fast_random() as u16, fast_random())
}

/// The layout of [`new_trace_id`]: 48 bits of `millis`, then the 80 bits of `random_hi` and
/// `random_lo` (the last bit forced on if everything else is zero). Public for benchmarks that
/// need such ids deterministically.
pub fn time_first_trace_id(millis: u64, random_hi: u16, random_lo: u64) -> String {
    let mut buf = [0u8; 32];
    let head = (millis << 16) | u64::from(random_hi);
    hex_into(head, &mut buf[..16]);
    hex_into(random_lo | u64::from(head == 0), &mut buf[16..]);
    hex_string(&buf)
}

/// 16 lowercase hex chars (never all zeros): the next number of this process's span-id
/// sequence, which starts at a random point of the 64-bit range and counts up (a thread that
/// mints ids takes them [`SPAN_ID_BLOCK`] at a time). The ids stay unique within a process (no
/// clock is involved, so a clock step cannot repeat one), and two processes' sequences start at
/// independent random points, so across restarts and instances two runs of ids overlap only
/// with a probability of about their combined length over 2^64. The store's span-id records
/// (`i`) of the spans the proxy records then land next to each other instead of at random
/// places, where each insert read a leaf back from disk once the store outgrew sled's cache
/// (bench/RESULTS.md, session 24). Like snowflake ids, two ids tell roughly how many requests
/// the proxy received between them: span ids are identifiers, not secrets.
pub fn new_span_id() -> String {
    span_id_from(next_span_number())
}

/// `n` as a span id: 16 lowercase hex digits. Public for benchmarks that need the proxy's ids
/// deterministically.
pub fn span_id_from(n: NonZeroU64) -> String {
    let mut buf = [0u8; 16];
    hex_into(n.get(), &mut buf);
    hex_string(&buf)
}

/// How many span ids a thread takes from the process's sequence at a time.
const SPAN_ID_BLOCK: u64 = 256;

/// The process's span-id sequence: the first number of the next block any thread takes.
static SPAN_SEQUENCE: LazyLock<AtomicU64> = LazyLock::new(|| AtomicU64::new(sequence_start()));

/// Where a process's span-id sequence starts: a random 64-bit number (the minting thread's
/// generator, seeded from the OS through the standard library's hash keys and the clock).
fn sequence_start() -> u64 {
    fast_random()
}

/// The next number of this thread's block of the process's sequence.
fn next_span_number() -> NonZeroU64 {
    SPAN_BLOCK.with(|cell| {
        let (n, rest) = take_span_number(cell.get(), &SPAN_SEQUENCE);
        cell.set(rest);
        n
    })
}

/// The next number of `block` (next, end), after taking a new block of [`SPAN_ID_BLOCK`]
/// numbers from `sequence` if it is used up; 0 (all-zero ids are invalid in W3C trace context)
/// is skipped. Returns the number and what is left of the block.
fn take_span_number(
    (mut next, mut end): (u64, u64),
    sequence: &AtomicU64,
) -> (NonZeroU64, (u64, u64)) {
    loop {
        if next == end {
            next = sequence.fetch_add(SPAN_ID_BLOCK, Ordering::Relaxed);
            end = next.wrapping_add(SPAN_ID_BLOCK);
        }
        let n = next;
        next = next.wrapping_add(1);
        if let Some(n) = NonZeroU64::new(n) {
            return (n, (next, end));
        }
    }
}

thread_local! {
    /// This thread's block of the span-id sequence: (next, end); empty at first.
    static SPAN_BLOCK: std::cell::Cell<(u64, u64)> = const { std::cell::Cell::new((0, 0)) };

    /// wyrand state, seeded per thread from the standard library's random hash keys (which come
    /// from the OS). IDs must be unique, not secret: a 64-bit generator per thread is plenty and
    /// costs a handful of instructions, where a UUID went through a CSPRNG and `fmt`.
    static RNG: std::cell::Cell<u64> = std::cell::Cell::new(seed());
}

fn seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    if let Ok(t) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        h.write_u128(t.as_nanos());
    }
    h.finish()
}

/// One wyrand step.
fn fast_random() -> u64 {
    RNG.with(|state| {
        let s = state.get().wrapping_add(0xa076_1d64_78bd_642f);
        state.set(s);
        let t = u128::from(s) * u128::from(s ^ 0xe703_7ed1_a0b4_28db);
        ((t >> 64) as u64) ^ (t as u64)
    })
}

/// Writes `v` as 16 lowercase hex digits into `out` (16 bytes).
fn hex_into(mut v: u64, out: &mut [u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in out.iter_mut().rev() {
        *b = HEX[(v & 0xf) as usize];
        v >>= 4;
    }
}

fn hex_string(buf: &[u8]) -> String {
    // Always ASCII hex, so the conversion cannot fail.
    std::str::from_utf8(buf).unwrap_or_default().to_owned()
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

    /// Found by the `trace_headers` fuzz target (an empty `traceparent`): pins the rule that an
    /// unreadable traceparent is the app's, forwarded untouched, while a valid one is rewritten.
    #[test]
    fn an_unreadable_traceparent_is_forwarded_untouched_and_a_valid_one_rewritten() {
        for bad in [
            "",
            "junk",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        ] {
            let sent = headers(&[("traceparent", bad), ("x-tracer-tags", "a")]);
            let ctx = TraceContext::extract(&sent);
            assert!(ctx.w3c.is_none(), "{bad:?} is not a W3C context");
            let mut upstream = sent.clone();
            ctx.apply_to_upstream(&mut upstream);
            assert_eq!(
                upstream.get("traceparent").unwrap(),
                bad,
                "{bad:?} goes up as sent"
            );
            assert!(upstream.get("x-tracer-tags").is_none());
        }
        let ctx = TraceContext::extract(&headers(&[("traceparent", TP), ("traceparent", TP)]));
        let mut upstream = headers(&[("traceparent", TP), ("traceparent", TP)]);
        ctx.apply_to_upstream(&mut upstream);
        let sent: Vec<_> = upstream.get_all("traceparent").iter().collect();
        assert_eq!(
            sent.len(),
            1,
            "a valid traceparent is rewritten to exactly one value"
        );
        let rewritten = parse_traceparent(sent[0].to_str().unwrap()).unwrap();
        assert_eq!(
            rewritten.parent_id, ctx.span_id,
            "the proxy span is the parent"
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
    fn fresh_ids_are_lowercase_hex_of_the_right_length_and_differ() {
        let hex = |s: &str| {
            s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            let (t, s) = (new_trace_id(), new_span_id());
            assert!(
                t.len() == 32 && hex(&t),
                "a trace id is 32 lowercase hex chars: {t}"
            );
            assert!(
                s.len() == 16 && hex(&s),
                "a span id is 16 lowercase hex chars: {s}"
            );
            assert!(
                parse_traceparent(&format!("00-{t}-{s}-01")).is_some(),
                "fresh ids make a valid traceparent"
            );
            assert!(seen.insert(s), "span ids do not repeat");
        }
    }

    /// Takes `count` numbers through `take_span_number` from `block`, returning them and the
    /// block left.
    fn take_n(mut block: (u64, u64), seq: &AtomicU64, count: usize) -> (Vec<u64>, (u64, u64)) {
        let mut taken = Vec::with_capacity(count);
        for _ in 0..count {
            let (n, rest) = take_span_number(block, seq);
            taken.push(n.get());
            block = rest;
        }
        (taken, block)
    }

    #[test]
    fn a_block_is_256_consecutive_numbers_taken_from_the_sequence() {
        let seq = AtomicU64::new(1_000);
        let (taken, block) = take_n((0, 0), &seq, 256);
        let expected: Vec<u64> = (1_000..1_256).collect();
        assert_eq!(taken, expected, "the first block, in order");
        assert_eq!(seq.load(Ordering::Relaxed), 1_256, "one block taken");
        // Another thread takes the next block meanwhile; this one's next block follows it.
        let (other, _) = take_n((0, 0), &seq, 1);
        assert_eq!(other, vec![1_256]);
        let (after, _) = take_n(block, &seq, 2);
        assert_eq!(
            after,
            vec![1_512, 1_513],
            "a used-up block takes the next free one"
        );
    }

    #[test]
    fn the_sequence_wraps_past_the_top_and_never_yields_zero_or_a_repeat() {
        // A start near 2^64: the block that crosses it wraps, skips 0, and gives 1 only once.
        let seq = AtomicU64::new(u64::MAX - 99);
        let (taken, _) = take_n((0, 0), &seq, 600);
        assert!(!taken.contains(&0), "0 is skipped");
        let distinct: std::collections::HashSet<u64> = taken.iter().copied().collect();
        assert_eq!(distinct.len(), taken.len(), "no number twice");
        assert_eq!(taken[..2], [u64::MAX - 99, u64::MAX - 98]);
        assert_eq!(taken[99], u64::MAX, "the top of the range");
        assert_eq!(taken[100], 1, "then past 0 to 1");
        assert_eq!(taken[599], 500);
    }

    #[test]
    fn span_ids_count_up_within_a_thread_and_never_repeat_across_threads() {
        let number = |id: &str| u64::from_str_radix(id, 16).expect("hex span id");
        let first = number(&new_span_id());
        let second = number(&new_span_id());
        assert_eq!(second, first.wrapping_add(1), "{first:x} then {second:x}");
        // Eight threads minting four blocks' worth each, released together.
        let per_thread = 4 * SPAN_ID_BLOCK as usize;
        let start = std::sync::Barrier::new(8);
        let minted: Vec<Vec<u64>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    scope.spawn(|| {
                        start.wait();
                        (0..per_thread)
                            .map(|_| number(&new_span_id()))
                            .collect::<Vec<u64>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("minting thread"))
                .collect()
        });
        let mut seen = std::collections::HashSet::new();
        for id in minted.iter().flatten() {
            assert!(seen.insert(*id), "span id {id:x} minted twice");
        }
        assert_eq!(span_id_from(NonZeroU64::MIN), "0000000000000001");
        assert_eq!(
            span_id_from(NonZeroU64::new(0xabc).expect("non-zero")),
            "0000000000000abc"
        );
    }

    #[test]
    fn fresh_trace_ids_start_with_the_time_so_later_traces_sort_after_earlier_ones() {
        let millis = 1_795_000_000_123u64;
        let id = new_trace_id_at(millis);
        assert_eq!(&id[..12], format!("{millis:012x}"), "{id}");
        // The same millisecond: the random part tells them apart.
        let ids: std::collections::HashSet<String> =
            (0..1000).map(|_| new_trace_id_at(millis)).collect();
        assert_eq!(ids.len(), 1000);
        assert!(new_trace_id_at(millis + 1) > new_trace_id_at(millis));
        // Even at time zero the id is never all zeros (W3C refuses that).
        assert!(new_trace_id_at(0).bytes().any(|b| b != b'0'));
        let clock = || {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64)
        };
        let before = clock();
        let now = new_trace_id();
        let prefix = u64::from_str_radix(&now[..12], 16).unwrap_or(0);
        assert!(
            (before..=clock()).contains(&prefix),
            "{now}: the time prefix is the clock's milliseconds, not {prefix}"
        );
    }

    #[test]
    fn the_first_value_of_a_repeated_header_counts_and_later_metadata_wins() {
        let ctx = TraceContext::extract(&headers(&[
            ("x-tracer-trace-id", "first"),
            ("x-tracer-trace-id", "second"),
            ("x-tracer-meta-k", "one"),
            ("x-tracer-meta-k", "two"),
            ("x-tracer-span-name", "  "),
        ]));
        assert_eq!(
            ctx.trace_id, "first",
            "like HeaderMap::get, the first value counts"
        );
        assert_eq!(ctx.metadata.get("k"), Some(&Value::String("two".into())));
        assert_eq!(ctx.span_name, None, "a blank value is no value");
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

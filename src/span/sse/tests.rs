//! Table tests for the SSE parser: framing rules, and identical events however the input is split.

use super::*;

/// (event type, data, id, end offset, complete)
type Expect<'a> = (Option<&'a str>, &'a str, Option<&'a str>, u64, bool);

fn check(name: &str, input: &[u8], expected: &[Expect<'_>]) {
    let got = parse(input);
    let got: Vec<Expect<'_>> = got
        .iter()
        .map(|e| {
            (
                e.event.as_deref(),
                e.data.as_str(),
                e.id.as_deref(),
                e.end,
                e.complete,
            )
        })
        .collect();
    assert_eq!(
        got, expected,
        "case {name:?}: events must match the WHATWG framing rules"
    );
}

#[test]
fn framing_table() {
    let cases: &[(&str, &[u8], &[Expect<'_>])] = &[
        (
            "lf",
            b"data: a\n\ndata: b\n\n",
            &[(None, "a", None, 9, true), (None, "b", None, 18, true)],
        ),
        (
            "crlf",
            b"data: a\r\n\r\ndata: b\r\n\r\n",
            &[(None, "a", None, 10, true), (None, "b", None, 21, true)],
        ),
        (
            "lone cr",
            b"data: a\r\rdata: b\r\r",
            &[(None, "a", None, 9, true), (None, "b", None, 18, true)],
        ),
        (
            "mixed endings",
            b"data: a\r\ndata: b\r\n\ndata: c\r\r",
            &[(None, "a\nb", None, 19, true), (None, "c", None, 28, true)],
        ),
        (
            "multi-line data joins with lf",
            b"data: one\ndata: two\ndata:three\n\n",
            &[(None, "one\ntwo\nthree", None, 32, true)],
        ),
        (
            "one leading space is stripped",
            b"data:  two spaces\n\n",
            &[(None, " two spaces", None, 19, true)],
        ),
        (
            "no space after colon",
            b"data:x\n\n",
            &[(None, "x", None, 8, true)],
        ),
        (
            "a field without colon has an empty value",
            b"data\n\n",
            &[(None, "", None, 6, true)],
        ),
        (
            "an empty data line still dispatches",
            b"data:\n\n",
            &[(None, "", None, 7, true)],
        ),
        (
            "comments are ignored",
            b": ping\ndata: a\n: more\n\n:\n\n",
            &[(None, "a", None, 23, true)],
        ),
        (
            "event type",
            b"event: error\ndata: boom\n\n",
            &[(Some("error"), "boom", None, 25, true)],
        ),
        (
            "empty event type is message",
            b"event:\ndata: x\n\n",
            &[(None, "x", None, 16, true)],
        ),
        (
            "event type does not leak into the next event",
            b"event: e\ndata: 1\n\ndata: 2\n\n",
            &[
                (Some("e"), "1", None, 18, true),
                (None, "2", None, 27, true),
            ],
        ),
        (
            "a block without data is not an event",
            b"event: ping\nid: 7\n\ndata: x\n\n",
            &[(None, "x", Some("7"), 28, true)],
        ),
        (
            "ids persist until replaced",
            b"id: 1\ndata: a\n\ndata: b\n\nid\ndata: c\n\n",
            &[
                (None, "a", Some("1"), 15, true),
                (None, "b", Some("1"), 24, true),
                (None, "c", None, 36, true),
            ],
        ),
        (
            "an id with NUL is ignored",
            b"id: 1\ndata: a\n\nid: 2\x003\ndata: b\n\n",
            &[
                (None, "a", Some("1"), 15, true),
                (None, "b", Some("1"), 32, true),
            ],
        ),
        (
            "unknown fields are ignored",
            b"foo: bar\ndata: a\nDATA: no\n\n",
            &[(None, "a", None, 27, true)],
        ),
        (
            "a final event without a blank line is kept but marked",
            b"data: a\n\ndata: b",
            &[(None, "a", None, 9, true), (None, "b", None, 16, false)],
        ),
        (
            "a final event ended by one newline is marked",
            b"data: b\n",
            &[(None, "b", None, 8, false)],
        ),
        (
            "a leading BOM is stripped",
            b"\xEF\xBB\xBFdata: a\n\n",
            &[(None, "a", None, 12, true)],
        ),
        (
            "a BOM later is data",
            b"data: a\n\n\xEF\xBB\xBFdata: b\n\n",
            &[(None, "a", None, 9, true)],
        ),
        (
            "multi-byte utf-8",
            "data: héllo → 世界\n\n".as_bytes(),
            &[(None, "héllo → 世界", None, 25, true)],
        ),
        (
            "invalid utf-8 is replaced, never a panic",
            b"data: \xFF\xFE\n\n",
            &[(None, "\u{FFFD}\u{FFFD}", None, 10, true)],
        ),
        (
            "done marker",
            b"data: {\"a\":1}\n\ndata: [DONE]\n\n",
            &[
                (None, "{\"a\":1}", None, 15, true),
                (None, "[DONE]", None, 29, true),
            ],
        ),
        ("empty input", b"", &[]),
        ("only blank lines", b"\n\n\r\n\r", &[]),
    ];
    for (name, input, expected) in cases {
        check(name, input, expected);
    }
}

#[test]
fn retry_is_read_when_all_digits() {
    let events = parse(b"retry: 1500\ndata: a\n\nretry: 1.5\ndata: b\n\nretry: 99999999999999999999999\ndata: c\n\n");
    let retries: Vec<Option<u64>> = events.iter().map(|e| e.retry).collect();
    assert_eq!(
        retries,
        vec![Some(1500), None, None],
        "retry holds only an all-digit value that fits; anything else is ignored"
    );
}

/// A stream exercising every rule at once, so splitting it anywhere crosses each kind of boundary.
const RICH: &[u8] = b"\xEF\xBB\xBF: hello\r\nretry: 3000\r\nid: 9\r\nevent: chunk\r\ndata: {\"x\":\"h\xC3\xA9llo \xE4\xB8\x96\xE7\x95\x8C\"}\r\n\r\ndata: line one\rdata:  line two\r\rdata: a\ndata\n\n: comment\nevent: error\ndata: {\"error\":{\"message\":\"\xF0\x9F\x92\xA5\"}}\r\n\r\ndata: [DONE]\r\n\r\ndata: tail";

#[test]
fn splitting_at_every_byte_gives_identical_events() {
    let whole = parse(RICH);
    assert_eq!(
        whole.len(),
        6,
        "the rich stream has six events (the last one unterminated)"
    );
    for cut in 0..=RICH.len() {
        let (a, b) = RICH.split_at(cut);
        let mut out = Vec::new();
        let mut p = Parser::new();
        p.feed(a, &mut out);
        p.feed(b, &mut out);
        p.finish(&mut out);
        assert_eq!(
            out, whole,
            "splitting the stream at byte {cut} must not change any event or offset"
        );
    }
}

#[test]
fn splitting_twice_anywhere_gives_identical_events() {
    let whole = parse(RICH);
    for i in 0..=RICH.len() {
        for j in i..=RICH.len() {
            let mut out = Vec::new();
            let mut p = Parser::new();
            p.feed(&RICH[..i], &mut out);
            p.feed(&RICH[i..j], &mut out);
            p.feed(&RICH[j..], &mut out);
            p.finish(&mut out);
            assert_eq!(
                out, whole,
                "splitting at bytes {i} and {j} must not change any event"
            );
        }
    }
}

#[test]
fn feeding_one_byte_at_a_time_gives_identical_events() {
    let whole = parse(RICH);
    let mut out = Vec::new();
    let mut p = Parser::new();
    for b in RICH {
        p.feed(std::slice::from_ref(b), &mut out);
    }
    p.finish(&mut out);
    assert_eq!(out, whole, "byte-by-byte input parses like the whole body");
}

#[test]
fn offsets_point_past_the_dispatching_line_end() {
    let input = b"data: a\r\n\r\ndata: b\n\n";
    let events = parse(input);
    let ends: Vec<u64> = events.iter().map(|e| e.end).collect();
    assert_eq!(
        ends,
        vec![10, 20],
        "an event ends just past the first byte of its blank line's line ending"
    );
    assert!(
        events.iter().all(|e| e.end <= input.len() as u64),
        "no offset lies past the input"
    );
}

#[test]
fn events_are_emitted_as_soon_as_their_blank_line_arrives() {
    let mut out = Vec::new();
    let mut p = Parser::new();
    p.feed(b"data: a\n", &mut out);
    assert!(
        out.is_empty(),
        "an event is not dispatched before its blank line"
    );
    p.feed(b"\ndata: b", &mut out);
    assert_eq!(out.len(), 1, "the blank line dispatches at once");
    p.finish(&mut out);
    assert_eq!(out.len(), 2, "finish flushes the pending event");
    assert!(!out[1].complete, "a flushed event is marked incomplete");
}

#[test]
fn arbitrary_bytes_never_panic() {
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    for _ in 0..200 {
        let mut buf = Vec::new();
        for _ in 0..64 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let b = match seed % 8 {
                0 => b'\r',
                1 => b'\n',
                2 => b':',
                3 => b' ',
                _ => (seed >> 8) as u8,
            };
            buf.push(b);
        }
        let events = parse(&buf);
        assert!(
            events.iter().all(|e| e.end <= buf.len() as u64),
            "offsets stay within the input for any bytes"
        );
    }
}

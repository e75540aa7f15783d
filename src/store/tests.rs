use super::*;
use crate::span::{LlmInfo, SpanError};
use serde_json::json;

const T0: u64 = 1_700_000_000_000_000;

fn open(dir: &Path) -> Store {
    Store::open(dir, &StoreOptions::default()).expect("a fresh temp dir opens")
}

fn temp_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(dir.path());
    (dir, store)
}

/// A chain span starting `start_ms` after T0 and lasting `dur_ms`.
fn span(trace: &str, id: &str, start_ms: u64, dur_ms: u64) -> Span {
    let start = Timestamp(T0 + start_ms * 1000);
    let end = Timestamp(T0 + (start_ms + dur_ms) * 1000);
    Span {
        trace_id: trace.into(),
        span_id: id.into(),
        parent_span_id: None,
        name: format!("span {id}"),
        kind: Kind::Chain,
        start_time: start,
        end_time: end,
        duration_ms: start.ms_until(end),
        status: Status::Ok,
        error: None,
        session_id: None,
        user_id: None,
        tags: Vec::new(),
        metadata: Default::default(),
        http: None,
        llm: None,
        input: Value::Null,
        output: Value::Null,
        capture: None,
    }
}

/// An LLM chat call with a parent, tokens and an optional cost.
fn llm(
    trace: &str,
    id: &str,
    start_ms: u64,
    dur_ms: u64,
    model: &str,
    tokens: (u64, u64),
    cost: Option<f64>,
) -> Span {
    let mut s = span(trace, id, start_ms, dur_ms);
    s.kind = Kind::Llm;
    s.name = format!("chat {model}");
    s.llm = Some(LlmInfo {
        request_model: Some(model.into()),
        input_tokens: Some(tokens.0),
        output_tokens: Some(tokens.1),
        cost_usd: cost,
        ..LlmInfo::default()
    });
    s.input = json!({"model": model, "messages": [{"role": "user", "content": format!("question {id}")}]});
    s.output =
        json!({"choices": [{"message": {"role": "assistant", "content": format!("answer {id}")}}]});
    s
}

trait With: Sized {
    fn with(self, f: impl FnOnce(&mut Span)) -> Span;
}
impl With for Span {
    fn with(mut self, f: impl FnOnce(&mut Span)) -> Span {
        f(&mut self);
        self
    }
}

fn failed(msg: &str) -> impl FnOnce(&mut Span) + '_ {
    move |s| {
        s.status = Status::Error;
        s.error = Some(SpanError {
            kind: "upstream".into(),
            message: msg.into(),
        });
    }
}

fn child_of(p: &str) -> impl FnOnce(&mut Span) + '_ {
    move |s| s.parent_span_id = Some(p.into())
}

/// A small agent trace: root chain, two LLM calls (one failing), a tool.
fn agent_trace(trace: &str) -> Vec<Span> {
    vec![
        span(trace, "root", 0, 1000).with(|s| {
            s.name = "agent run".into();
            s.session_id = Some("sess-1".into());
            s.input = json!("What is the weather?");
            s.tags = vec!["prod".into()];
        }),
        llm(
            trace,
            "call1",
            10,
            200,
            "gpt-4o-mini",
            (100, 20),
            Some(0.001),
        )
        .with(child_of("root"))
        .with(|s| {
            s.user_id = Some("alice".into());
            s.tags = vec!["beta".into(), "prod".into()];
        }),
        span(trace, "tool1", 220, 100)
            .with(child_of("root"))
            .with(|s| s.kind = Kind::Tool),
        llm(trace, "call2", 400, 300, "gpt-4o", (50, 30), Some(0.002)).with(child_of("root")),
        llm(trace, "call3", 750, 100, "gpt-4o", (10, 0), None)
            .with(child_of("root"))
            .with(failed("rate limited"))
            .with(|s| s.output = Value::Null),
    ]
}

fn summary(store: &Store, trace: &str) -> TraceSummary {
    store
        .get_trace(trace)
        .expect("get_trace")
        .expect("the trace exists")
        .0
}

/// The trace ids `q` finds (up to 1000), newest first.
fn search(store: &Store, q: &str) -> Vec<String> {
    let page = store
        .list_traces(&TraceQuery {
            limit: 1000,
            q: Some(q.to_string()),
            ..TraceQuery::default()
        })
        .expect("list");
    ids(&page).into_iter().map(String::from).collect()
}

fn ids(page: &TracePage) -> Vec<&str> {
    page.traces.iter().map(|t| t.trace_id.as_str()).collect()
}

fn list(store: &Store, f: impl FnOnce(&mut TraceQuery)) -> Vec<String> {
    let mut q = TraceQuery {
        limit: 1000,
        ..TraceQuery::default()
    };
    f(&mut q);
    ids(&store.list_traces(&q).expect("list"))
        .into_iter()
        .map(String::from)
        .collect()
}

fn keys_with_prefix(store: &Store, p: u8) -> Vec<Vec<u8>> {
    store
        .tree
        .scan_prefix([p])
        .map(|kv| kv.expect("scan").0.to_vec())
        .collect()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn put_then_get_trace_round_trips_spans_in_start_order() {
    let (_dir, store) = temp_store();
    let mut spans = agent_trace("t1");
    spans.reverse();
    store.put_spans(&spans).expect("put");
    let (sum, got) = store
        .get_trace("t1")
        .expect("get")
        .expect("the trace was stored");
    let order: Vec<&str> = got.iter().map(|s| s.span_id.as_str()).collect();
    assert_eq!(
        order,
        ["root", "call1", "tool1", "call2", "call3"],
        "spans come back ordered by start time"
    );
    let mut expected = agent_trace("t1");
    expected.sort_by_key(|s| s.start_time);
    assert_eq!(
        got, expected,
        "spans round-trip unchanged through the store"
    );
    assert_eq!(sum.span_count, 5, "the summary counts every span");
    assert_eq!(
        store.get_span("call2").expect("get_span"),
        Some(expected[3].clone()),
        "a span is found by its id"
    );
    assert_eq!(
        store.get_span("nope").expect("get_span"),
        None,
        "an unknown span id is None"
    );
    assert!(
        store.get_trace("other").expect("get").is_none(),
        "an unknown trace is None"
    );
}

#[test]
fn summary_fields_follow_the_rules() {
    let (_dir, store) = temp_store();
    store.put_spans(&agent_trace("t1")).expect("put");
    let s = summary(&store, "t1");
    assert_eq!(s.name, "agent run", "the name is the root span's name");
    assert_eq!(
        s.start_time,
        Timestamp(T0),
        "start is the earliest span start"
    );
    assert_eq!(
        s.end_time,
        Timestamp(T0 + 1_000_000),
        "end is the latest span end"
    );
    assert_eq!(s.duration_ms, 1000.0, "duration is end minus start in ms");
    assert_eq!(
        s.status,
        Status::Error,
        "the trace is as bad as its worst span"
    );
    assert_eq!(
        s.error.as_deref(),
        Some("rate limited"),
        "error is the earliest error span's message"
    );
    assert_eq!(s.llm_calls, 3, "llm_calls counts LLM spans");
    assert_eq!(
        (s.input_tokens, s.output_tokens),
        (160, 50),
        "tokens are summed, unknown counts as 0"
    );
    let cost = s.cost_usd.expect("known costs are summed");
    assert!(
        (cost - 0.003).abs() < 1e-12,
        "cost is the sum of the known costs, got {cost}"
    );
    assert_eq!(
        s.models,
        ["gpt-4o", "gpt-4o-mini"],
        "models are sorted and unique"
    );
    assert_eq!(
        s.session_id.as_deref(),
        Some("sess-1"),
        "session comes from the root span"
    );
    assert_eq!(
        s.user_id.as_deref(),
        Some("alice"),
        "user falls back to the first span that has one"
    );
    assert_eq!(s.tags, ["beta", "prod"], "tags are the sorted union");
    assert_eq!(
        s.input_preview.as_deref(),
        Some("What is the weather?"),
        "input preview is the root input"
    );
    assert_eq!(
        s.output_preview.as_deref(),
        Some("answer call2"),
        "without root output, the latest-ending LLM output is used"
    );

    store
        .put_spans(&[llm("t2", "a", 0, 10, "m", (1, 1), None)])
        .expect("put");
    let s2 = summary(&store, "t2");
    assert_eq!(
        s2.cost_usd, None,
        "cost is null, never 0, when no span had a cost"
    );
    assert_eq!(s2.status, Status::Ok, "a trace without failures is ok");
    assert_eq!(s2.error, None, "error is null without error spans");
    assert_eq!(
        s2.input_preview.as_deref(),
        Some("question a"),
        "a chat input previews its last user message"
    );
    assert_eq!(
        s2.output_preview.as_deref(),
        Some("answer a"),
        "a chat completion previews choices[0].message.content"
    );
}

#[test]
fn previews_are_short_single_lines() {
    let long = "word\n ".repeat(100);
    let p = clip(&long).expect("text gives a preview");
    assert_eq!(
        p.chars().count(),
        PREVIEW_CHARS,
        "a preview is cut at the char limit"
    );
    assert!(
        p.ends_with('…') && !p.contains('\n'),
        "a cut preview ends with an ellipsis and is one line"
    );
    assert_eq!(clip("  "), None, "blank text gives no preview");
    assert_eq!(
        input_preview(&json!({"a": 1})).as_deref(),
        Some(r#"{"a":1}"#),
        "other JSON previews compactly"
    );
    let anthropic =
        json!({"content": [{"type": "text", "text": "hi"}, {"type": "text", "text": "there"}]});
    assert_eq!(
        output_preview(&anthropic).as_deref(),
        Some("hi there"),
        "text blocks are joined"
    );
    let huge = json!({"data": "x".repeat(1_000_000)});
    assert!(
        compact_json(&huge).len() <= PREVIEW_CHARS * 8,
        "compact JSON of a huge body is capped"
    );
}

#[test]
fn arrival_order_does_not_change_the_summary() {
    let spans = agent_trace("t1");
    let (_d1, a) = temp_store();
    a.put_spans(&spans).expect("put");
    let (_d2, b) = temp_store();
    for s in spans.iter().rev() {
        b.put_spans(std::slice::from_ref(s)).expect("put");
    }
    let (_d3, c) = temp_store();
    c.put_spans(&[spans[3].clone(), spans[1].clone()])
        .expect("put");
    c.put_spans(&[spans[4].clone(), spans[0].clone(), spans[2].clone()])
        .expect("put");
    let (sa, sb, sc) = (summary(&a, "t1"), summary(&b, "t1"), summary(&c, "t1"));
    assert_eq!(
        sa, sb,
        "inserting the same spans in reverse order gives the same summary"
    );
    assert_eq!(
        sa, sc,
        "inserting the same spans in shuffled batches gives the same summary"
    );
}

#[test]
fn a_late_earlier_span_moves_the_trace_in_the_time_index() {
    let (_dir, store) = temp_store();
    store
        .put_spans(&[span("late", "l1", 30_000, 10).with(child_of("lroot"))])
        .expect("put");
    store
        .put_spans(&[span("mid", "m1", 20_000, 10)])
        .expect("put");
    assert_eq!(
        list(&store, |_| {}),
        ["late", "mid"],
        "newest trace start first"
    );
    assert_eq!(
        list(&store, |q| q.status = Some(Status::Ok)),
        ["late", "mid"],
        "both are ok"
    );

    let root = span("late", "lroot", 10_000, 30_000)
        .with(failed("boom"))
        .with(|s| s.name = "late root".into());
    store.put_spans(&[root]).expect("put");
    assert_eq!(
        list(&store, |_| {}),
        ["mid", "late"],
        "the trace moves to its new, earlier start and appears once"
    );
    assert_eq!(
        list(&store, |q| q.status = Some(Status::Ok)),
        ["mid"],
        "the old status index entry is gone"
    );
    assert_eq!(
        list(&store, |q| q.status = Some(Status::Error)),
        ["late"],
        "the new status index entry exists"
    );
    let s = summary(&store, "late");
    assert_eq!(
        s.name, "late root",
        "a parentless span that arrives late becomes the root"
    );
    assert_eq!(
        s.start_time,
        Timestamp(T0 + 10_000_000),
        "the start moved earlier"
    );

    let late_keys = |p: u8| {
        keys_with_prefix(&store, p)
            .into_iter()
            .filter(|k| contains(k, b"late"))
            .count()
    };
    assert_eq!(
        late_keys(P_TIME),
        1,
        "exactly one time-index key remains for the trace"
    );
    assert_eq!(
        late_keys(P_INDEX),
        1,
        "exactly one secondary-index key (its status) remains for the trace"
    );
    let old = inv(T0 + 30_000_000).to_be_bytes();
    assert!(
        !keys_with_prefix(&store, P_TIME)
            .iter()
            .chain(&keys_with_prefix(&store, P_INDEX))
            .any(|k| contains(k, &old)),
        "no index key still carries the old start"
    );
}

#[test]
fn resending_a_span_id_replaces_the_span() {
    let (_dir, store) = temp_store();
    store
        .put_spans(&[
            llm("t", "a", 0, 100, "m1", (10, 10), Some(0.5)),
            span("t", "b", 0, 50),
        ])
        .expect("put");
    let resent = llm("t", "a", 5, 100, "m2", (1, 2), Some(0.25));
    store.put_spans(std::slice::from_ref(&resent)).expect("put");
    let (s, spans) = store.get_trace("t").expect("get").expect("exists");
    assert_eq!(s.span_count, 2, "a re-sent span id is not counted twice");
    assert_eq!(
        (s.input_tokens, s.output_tokens, s.cost_usd),
        (1, 2, Some(0.25)),
        "only the new version counts"
    );
    assert_eq!(s.models, ["m2"], "the replaced span's model is gone");
    assert_eq!(spans.len(), 2, "the old span record is removed");
    assert_eq!(
        store.get_span("a").expect("get"),
        Some(resent),
        "the span id resolves to the new version"
    );
    assert_eq!(
        list(&store, |q| q.model = Some("m1".into())),
        Vec::<String>::new(),
        "the old model index is gone"
    );
    assert_eq!(
        keys_with_prefix(&store, P_CALL).len(),
        1,
        "one call record per call, the old one is removed"
    );

    // Duplicates inside one batch: the last one wins.
    store
        .put_spans(&[
            span("d", "x", 0, 10),
            span("d", "x", 1, 10),
            span("d", "x", 1, 20),
        ])
        .expect("put");
    let (s, spans) = store.get_trace("d").expect("get").expect("exists");
    assert_eq!(
        (s.span_count, spans.len()),
        (1, 1),
        "duplicates in one batch collapse into one span"
    );
    assert_eq!(s.duration_ms, 20.0, "the last duplicate in a batch wins");
    assert_eq!(
        store
            .stats(&StatsQuery::default())
            .expect("stats")
            .total
            .calls,
        1,
        "stats count the call once"
    );
}

#[test]
fn invalid_ids_are_skipped() {
    let (_dir, store) = temp_store();
    store
        .put_spans(&[
            span("bad\0id", "a", 0, 1),
            span("ok", "bad id", 0, 1),
            span("ok", "b", 0, 1),
        ])
        .expect("put");
    assert_eq!(
        list(&store, |_| {}),
        ["ok"],
        "spans with invalid ids are not stored"
    );
    assert_eq!(
        summary(&store, "ok").span_count,
        1,
        "only the valid span was counted"
    );
}

fn stats_total(store: &Store) -> StatsRow {
    store.stats(&StatsQuery::default()).expect("stats").total
}

#[test]
fn a_span_id_reused_by_another_trace_moves_the_span_out_of_the_old_trace() {
    let (_dir, store) = temp_store();
    store
        .put_spans(&[
            llm("a", "same", 0, 10, "m-old", (100, 10), Some(0.5)),
            llm("a", "keep", 1, 10, "m-keep", (1, 1), None),
        ])
        .expect("put");
    store
        .put_spans(&[
            llm("b", "same", 5, 10, "m-new", (7, 3), None),
            span("b", "other", 6, 10),
        ])
        .expect("put");
    assert_eq!(
        store.get_span("same").expect("get").map(|s| s.trace_id),
        Some("b".into()),
        "the span id resolves to the trace that sent it last"
    );
    let (a, a_spans) = store.get_trace("a").expect("get").expect("a still exists");
    assert_eq!(
        a_spans
            .iter()
            .map(|s| s.span_id.as_str())
            .collect::<Vec<_>>(),
        ["keep"],
        "the old trace no longer holds the moved span"
    );
    assert_eq!(
        (a.span_count, a.input_tokens, a.output_tokens, a.cost_usd),
        (1, 1, 1, None),
        "the old trace's summary no longer counts the moved span"
    );
    assert_eq!(
        a.models,
        ["m-keep"],
        "the moved span's model left the old trace"
    );
    assert_eq!(
        list(&store, |q| q.model = Some("m-old".into())),
        Vec::<String>::new(),
        "the old trace's index entry for the moved span's model is gone"
    );
    assert_eq!(
        a.start_time,
        Timestamp(T0 + 1000),
        "the old trace's start is recomputed from its remaining spans"
    );
    let b = summary(&store, "b");
    assert_eq!(
        (b.span_count, b.input_tokens),
        (2, 7),
        "the new trace counts the span"
    );
    let st = stats_total(&store);
    assert_eq!(
        (st.calls, st.input_tokens),
        (2, 8),
        "stats count the moved call once, in its new version, plus the other call"
    );

    // Moving a trace's only span makes that trace disappear.
    store.put_spans(&[span("c", "solo", 0, 10)]).expect("put");
    store.put_spans(&[span("d", "solo", 0, 10)]).expect("put");
    assert!(
        store.get_trace("c").expect("get").is_none(),
        "a trace whose only span moved away is gone"
    );
    assert!(
        !list(&store, |_| {}).contains(&"c".to_string()),
        "a trace whose only span moved away is no longer listed"
    );
    for kv in store.tree.iter() {
        let (k, _) = kv.expect("scan");
        let (prefix, tail) = k.split_first().expect("keys are never empty");
        let gone = match *prefix {
            P_SUMMARY => tail == b"c",
            P_TIME | P_INDEX => tail.ends_with(b"c"),
            P_SPAN => tail.starts_with(b"c\0"),
            P_CALL => contains(tail, b"c\0solo"),
            _ => false,
        };
        assert!(
            !gone,
            "no key is left for the vanished trace: {}",
            show_key(&k)
        );
    }
    assert_eq!(
        summary(&store, "d").span_count,
        1,
        "the span lives in its new trace"
    );
}

#[test]
fn a_span_id_moving_between_traces_inside_one_batch_ends_in_the_last_one() {
    let (_dir, store) = temp_store();
    store
        .put_spans(&[
            llm("a", "x", 0, 10, "m", (1, 0), None),
            span("a", "a-root", 0, 10),
            llm("b", "x", 1, 10, "m", (2, 0), None),
            llm("c", "x", 2, 10, "m", (4, 0), None),
        ])
        .expect("put");
    assert_eq!(
        summary(&store, "a").span_count,
        1,
        "the first trace keeps only its other span"
    );
    assert!(
        store.get_trace("b").expect("get").is_none(),
        "a trace that held the span only in passing does not exist"
    );
    assert_eq!(
        summary(&store, "c").input_tokens,
        4,
        "the last trace holds the span"
    );
    let st = stats_total(&store);
    assert_eq!(
        (st.calls, st.input_tokens),
        (1, 4),
        "stats see only the final version of the call"
    );
}

#[test]
fn traces_sharing_a_start_and_span_id_keep_separate_call_records() {
    let (_dir, store) = temp_store();
    // Stored by an older writer or raced: same start, same span id, two traces. Build the
    // keys directly, as put_spans would never leave the id in two traces.
    let a = llm("a", "dup", 0, 10, "m", (1, 0), None);
    let b = llm("b", "dup", 0, 10, "m", (2, 0), None);
    let ka = call_key(a.start_time.micros(), "a", "dup");
    let kb = call_key(b.start_time.micros(), "b", "dup");
    assert_ne!(ka, kb, "the call keys of two traces never collide");
    store.put_spans(std::slice::from_ref(&a)).expect("put");
    // Put `b`'s span key and call record next to `a`'s, as if both owned the id.
    let sb = span_key("b", b.start_time.micros(), "dup");
    store
        .tree
        .insert(&sb, encode_json(&b, &sb).expect("encode"))
        .expect("insert");
    store
        .tree
        .insert(&kb, CallRec::of(&b).encode())
        .expect("insert");
    assert_eq!(
        stats_total(&store).calls,
        2,
        "both traces' calls are counted"
    );
    assert!(store.delete_trace("b").expect("delete"), "b existed");
    let st = stats_total(&store);
    assert_eq!(
        (st.calls, st.input_tokens),
        (1, 1),
        "deleting one trace leaves the other trace's call record"
    );
    assert_eq!(
        store.get_span("dup").expect("get").map(|s| s.trace_id),
        Some("a".into()),
        "deleting a trace that does not own the span id keeps the lookup"
    );
}

#[test]
fn deleting_a_trace_keeps_the_stats_of_a_trace_that_took_over_its_span_id() {
    let (_dir, store) = temp_store();
    store
        .put_spans(&[
            llm("a", "same", 0, 10, "m", (1, 0), None),
            span("a", "r", 0, 5),
        ])
        .expect("put");
    store
        .put_spans(&[llm("b", "same", 0, 10, "m", (5, 0), None)])
        .expect("put");
    assert!(store.delete_trace("a").expect("delete"), "a still existed");
    let st = stats_total(&store);
    assert_eq!(
        (st.calls, st.input_tokens),
        (1, 5),
        "the other trace's call record survives deleting the first trace"
    );
    assert_eq!(
        store.get_span("same").expect("get").map(|s| s.trace_id),
        Some("b".into()),
        "the span-id lookup still points at the other trace"
    );
    assert!(store.delete_trace("b").expect("delete"), "b existed");
    assert_eq!(
        stats_total(&store).calls,
        0,
        "deleting both leaves no call record"
    );
    assert_eq!(
        store.tree.iter().count(),
        1,
        "only the schema record is left once every trace is deleted"
    );
}

#[test]
fn summaries_keep_at_most_the_smallest_tags_and_models() {
    let (_dir, store) = temp_store();
    let n = MAX_SUMMARY_VALUES + 10;
    let mut spans: Vec<Span> = (0..n)
        .map(|i| {
            llm(
                "t",
                &format!("s{i}"),
                i as u64,
                1,
                &format!("model-{i:03}"),
                (0, 0),
                None,
            )
            .with(|s| s.tags = vec![format!("tag-{i:03}"), "common".into()])
        })
        .collect();
    spans.reverse(); // the kept values do not depend on arrival order
    store.put_spans(&spans).expect("put");
    let s = summary(&store, "t");
    assert_eq!(
        s.models.len(),
        MAX_SUMMARY_VALUES,
        "a summary holds at most the capped number of models"
    );
    assert_eq!(
        s.tags.len(),
        MAX_SUMMARY_VALUES,
        "a summary holds at most the capped number of tags"
    );
    assert_eq!(
        s.models.first().map(String::as_str),
        Some("model-000"),
        "the smallest models are kept"
    );
    assert!(
        s.tags.contains(&"common".to_string()) && s.tags.contains(&"tag-000".to_string()),
        "the smallest tags are kept"
    );
    let count = |field: u8| {
        keys_with_prefix(&store, P_INDEX)
            .into_iter()
            .filter(|k| k.get(1) == Some(&field))
            .count()
    };
    assert_eq!(
        count(F_MODEL),
        MAX_SUMMARY_VALUES,
        "only kept models are indexed"
    );
    assert_eq!(
        count(F_TAG),
        MAX_SUMMARY_VALUES,
        "only kept tags are indexed"
    );
    let last = format!("tag-{:03}", n - 1);
    assert_eq!(
        list(&store, |q| q.tag = Some(last.clone())),
        Vec::<String>::new(),
        "a tag beyond the cap is not indexed"
    );
    assert_eq!(
        list(&store, |q| q.tag = Some("tag-000".into())),
        ["t"],
        "a kept tag is indexed"
    );

    let (_d2, other) = temp_store();
    for sp in spans.iter().rev() {
        other.put_spans(std::slice::from_ref(sp)).expect("put");
    }
    assert_eq!(
        summary(&other, "t"),
        s,
        "capping gives the same summary whatever the arrival order"
    );
}

/// Four traces, 1 s apart, newest = t4.
fn filter_fixture(store: &Store) {
    let t = |id: &str, at: u64, f: &dyn Fn(&mut Span)| {
        let mut s = llm(
            id,
            &format!("{id}-s"),
            at * 1000,
            10,
            "gpt-4o",
            (1, 1),
            None,
        );
        f(&mut s);
        store.put_spans(&[s]).expect("put");
    };
    t("t1", 1, &|s| {
        s.session_id = Some("S1".into());
        s.user_id = Some("alice".into());
        s.tags = vec!["prod".into()];
    });
    t("t2", 2, &|s| {
        s.session_id = Some("S1".into());
        s.user_id = Some("bob".into());
        s.status = Status::Error;
        s.llm.as_mut().expect("llm").request_model = Some("claude-3".into());
    });
    t("t3", 3, &|s| {
        s.session_id = Some("S2".into());
        s.user_id = Some("alice".into());
        s.tags = vec!["prod".into(), "exp".into()];
        s.name = "Summarize Invoice".into();
    });
    t("t4", 4, &|s| {
        s.user_id = Some("alice".into());
        s.status = Status::Cancelled;
        s.input = json!("Needle in the INPUT");
    });
}

#[test]
fn each_filter_and_their_combinations() {
    let (_dir, store) = temp_store();
    filter_fixture(&store);
    let s = |v: &str| Some(v.to_string());
    assert_eq!(
        list(&store, |_| {}),
        ["t4", "t3", "t2", "t1"],
        "no filter lists all, newest first"
    );
    assert_eq!(
        list(&store, |q| q.status = Some(Status::Error)),
        ["t2"],
        "status filter"
    );
    assert_eq!(
        list(&store, |q| q.status = Some(Status::Cancelled)),
        ["t4"],
        "status cancelled"
    );
    assert_eq!(
        list(&store, |q| q.model = s("gpt-4o")),
        ["t4", "t3", "t1"],
        "model filter"
    );
    assert_eq!(
        list(&store, |q| q.model = s("gpt")),
        Vec::<String>::new(),
        "model filter is exact"
    );
    assert_eq!(
        list(&store, |q| q.session_id = s("S1")),
        ["t2", "t1"],
        "session filter"
    );
    assert_eq!(
        list(&store, |q| q.user_id = s("alice")),
        ["t4", "t3", "t1"],
        "user filter"
    );
    assert_eq!(
        list(&store, |q| q.tag = s("prod")),
        ["t3", "t1"],
        "tag filter"
    );
    assert_eq!(
        list(&store, |q| q.q = s("invoice")),
        ["t3"],
        "q matches the name case-insensitively"
    );
    assert_eq!(
        list(&store, |q| q.q = s("needle in")),
        ["t4"],
        "q matches the input preview"
    );
    assert_eq!(
        list(&store, |q| q.q = s("CLAUDE")),
        ["t2"],
        "q matches models"
    );
    assert_eq!(
        list(&store, |q| q.q = s("t3")),
        ["t3"],
        "q matches the trace id"
    );
    assert_eq!(list(&store, |q| q.q = s("EXP")), ["t3"], "q matches tags");
    let at = |sec: u64| Some(Timestamp(T0 + sec * 1_000_000));
    assert_eq!(
        list(&store, |q| q.since = at(2)),
        ["t4", "t3", "t2"],
        "since is inclusive"
    );
    assert_eq!(
        list(&store, |q| q.until = at(3)),
        ["t2", "t1"],
        "until is exclusive"
    );
    assert_eq!(
        list(&store, |q| (q.since, q.until) = (at(2), at(4))),
        ["t3", "t2"],
        "since and until together"
    );
    assert_eq!(
        list(&store, |q| (q.since, q.until) = (at(3), at(3))),
        Vec::<String>::new(),
        "an empty window is empty"
    );
    assert_eq!(
        list(&store, |q| q.until = Some(Timestamp(0))),
        Vec::<String>::new(),
        "until 0 is empty"
    );
    assert_eq!(
        list(&store, |q| (q.user_id, q.tag) = (s("alice"), s("prod"))),
        ["t3", "t1"],
        "user and tag"
    );
    assert_eq!(
        list(&store, |q| (q.session_id, q.status) =
            (s("S1"), Some(Status::Ok))),
        ["t1"],
        "session and status"
    );
    assert_eq!(
        list(&store, |q| (q.user_id, q.model, q.since) =
            (s("alice"), s("gpt-4o"), at(3))),
        ["t4", "t3"],
        "user, model and since"
    );
    assert_eq!(
        list(&store, |q| (q.tag, q.q) = (s("prod"), s("summarize"))),
        ["t3"],
        "tag and q"
    );
    assert_eq!(
        list(&store, |q| (q.session_id, q.user_id) = (s("S2"), s("bob"))),
        Vec::<String>::new(),
        "AND, not OR"
    );
}

#[test]
fn index_values_with_nul_bytes_stay_exact() {
    let (_dir, store) = temp_store();
    store
        .put_spans(&[
            llm("a", "a1", 0, 1, "m", (0, 0), None),
            llm("b", "b1", 1, 1, "m\0x", (0, 0), None),
        ])
        .expect("put");
    store
        .put_spans(&[llm("c", "c1", 2, 1, "m\u{1}", (0, 0), None)])
        .expect("put");
    let s = |v: &str| Some(v.to_string());
    assert_eq!(
        list(&store, |q| q.model = s("m")),
        ["a"],
        "a value is not matched by a longer one containing 0x00"
    );
    assert_eq!(
        list(&store, |q| q.model = s("m\0x")),
        ["b"],
        "a value containing 0x00 is found exactly"
    );
    assert_eq!(
        list(&store, |q| q.model = s("m\u{1}")),
        ["c"],
        "a value containing 0x01 is found exactly"
    );
}

#[test]
fn cursor_pagination_returns_every_trace_exactly_once() {
    let (_dir, store) = temp_store();
    // Pairs share a start time so the trace id breaks ties.
    let spans: Vec<Span> = (0..25)
        .map(|i| span(&format!("tr{i:02}"), &format!("s{i}"), (i / 2) * 1000, 5))
        .collect();
    store.put_spans(&spans).expect("put");
    for filter in [None, Some(Status::Ok)] {
        let mut seen = Vec::new();
        let mut cursor = None;
        let mut pages = 0;
        loop {
            let q = TraceQuery {
                limit: 10,
                cursor: cursor.clone(),
                status: filter,
                ..TraceQuery::default()
            };
            let page = store.list_traces(&q).expect("list");
            pages += 1;
            seen.extend(page.traces.iter().map(|t| t.trace_id.clone()));
            match page.next_cursor {
                Some(c) => cursor = Some(Cursor::decode(&c).expect("next_cursor decodes")),
                None => break,
            }
        }
        assert_eq!(
            pages, 3,
            "25 traces at limit 10 take three pages, the last without next_cursor"
        );
        let mut unique = seen.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(
            (seen.len(), unique.len()),
            (25, 25),
            "every trace is returned exactly once"
        );
        let starts: Vec<u64> = seen
            .iter()
            .map(|id| summary(&store, id).start_time.micros())
            .collect();
        assert!(
            starts.windows(2).all(|w| w[0] >= w[1]),
            "pages run newest first"
        );
    }
    let q = TraceQuery {
        limit: 25,
        ..TraceQuery::default()
    };
    assert_eq!(
        store.list_traces(&q).expect("list").next_cursor,
        None,
        "an exact last page has no next_cursor"
    );
}

#[test]
fn cursors_round_trip_and_malformed_ones_decode_to_none() {
    let c = Cursor {
        start_us: T0,
        trace_id: "abc-1.2:3_x".into(),
    };
    assert_eq!(
        Cursor::decode(&c.encode()),
        Some(c.clone()),
        "a cursor round-trips"
    );
    assert!(
        c.encode().bytes().all(|b| b.is_ascii_hexdigit()),
        "the wire form is URL-safe"
    );
    let mut bad_id = vec![CURSOR_VERSION];
    bad_id.extend_from_slice(&T0.to_be_bytes());
    bad_id.extend_from_slice(b"a b");
    let mut wrong_version = hex::decode(c.encode()).expect("hex");
    wrong_version[0] = 9;
    for bad in [
        String::new(),
        "zz".into(),
        "abc".into(),
        "01".into(),
        hex::encode([CURSOR_VERSION, 0, 0, 0, 0, 0, 0, 0, 1]),
        hex::encode(bad_id),
        hex::encode(wrong_version),
        hex::encode([CURSOR_VERSION, 0, 0, 0, 0, 0, 0, 0, 1, 0xFF]),
    ] {
        assert_eq!(
            Cursor::decode(&bad),
            None,
            "a malformed cursor {bad:?} decodes to None"
        );
    }
}

#[test]
fn delete_removes_everything_about_the_trace() {
    let (_dir, store) = temp_store();
    store.put_spans(&agent_trace("doomed")).expect("put");
    store
        .put_spans(
            &agent_trace("kept")
                .into_iter()
                .map(|s| s.with(|s| s.span_id.push_str("-k")))
                .collect::<Vec<_>>(),
        )
        .expect("put");
    assert!(
        store.delete_trace("doomed").expect("delete"),
        "deleting an existing trace reports it existed"
    );
    assert!(
        !store.delete_trace("doomed").expect("delete"),
        "deleting it again reports it did not exist"
    );
    assert!(
        store.get_trace("doomed").expect("get").is_none(),
        "the trace is gone"
    );
    assert_eq!(
        store.get_span("call1").expect("get"),
        None,
        "its spans are gone"
    );
    assert_eq!(
        list(&store, |_| {}),
        ["kept"],
        "only the other trace is listed"
    );
    for kv in store.tree.iter() {
        let (k, v) = kv.expect("scan");
        assert!(
            !contains(&k, b"doomed") && !contains(&v, b"doomed"),
            "no key or value mentions the deleted trace: {}",
            show_key(&k)
        );
        // (A posting key holds a term, here the other trace's span name `call1`, not a span.)
        assert!(
            !contains(&k, b"call1") || contains(&k, b"call1-k") || k.first() == Some(&P_TERM),
            "no key names a deleted span"
        );
    }
    assert_eq!(
        store
            .stats(&StatsQuery::default())
            .expect("stats")
            .total
            .calls,
        3,
        "its call records are gone"
    );
    assert_eq!(
        summary(&store, "kept").span_count,
        5,
        "the other trace is untouched"
    );
}

/// A store with moved, replaced, out-of-order and deleted spans: everything `check` looks at.
fn busy_store() -> (tempfile::TempDir, Store) {
    let (dir, store) = temp_store();
    store.put_spans(&agent_trace("a")).expect("put");
    let mut b = agent_trace("b");
    b.reverse();
    for s in &mut b {
        s.span_id.push_str("-b");
    }
    store.put_spans(&b).expect("put");
    store
        .put_spans(
            &agent_trace("doomed")
                .into_iter()
                .map(|s| s.with(|s| s.span_id.push_str("-d")))
                .collect::<Vec<_>>(),
        )
        .expect("put");
    store.delete_trace("doomed").expect("delete");
    // A span re-sent with changes, and one that moves to another trace.
    let moved = llm("c", "call2-b", 5, 10, "gpt-4o", (1, 1), Some(0.5));
    store.put_spans(&[moved]).expect("put");
    let replaced = span("a", "tool1", 220, 150).with(|s| s.kind = Kind::Tool);
    store.put_spans(&[replaced]).expect("put");
    (dir, store)
}

#[test]
fn check_finds_a_consistent_store_clean_and_counts_its_records() {
    let (_dir, store) = busy_store();
    let report = store.check().expect("check");
    assert!(
        report.is_clean(),
        "a store written through the API is consistent: {report:?}"
    );
    assert_eq!(report.traces, 3, "traces a, b and c are counted");
    assert_eq!(report.summaries, 3, "one summary per trace");
    assert_eq!(report.spans, 10, "5 + 4 + 1 spans remain");
    assert_eq!(report.span_ids, 10, "one `i` record per span");
    assert_eq!(report.calls, 6, "one call record per LLM span");
    assert_eq!(report.time_index, 3, "one time-index entry per trace");
    assert!(
        report.secondary_index > 0,
        "secondary index entries are counted"
    );
}

/// Summaries without spans are found wherever they sort: before every trace, between a trace
/// and one whose id it extends, after every trace; a trace whose only span does not decode is
/// not one of them.
#[test]
fn check_names_orphan_summaries_wherever_they_sort() {
    let (_dir, store) = busy_store();
    let ab: Vec<Span> = agent_trace("ab")
        .into_iter()
        .map(|s| s.with(|s| s.span_id.push_str("-ab")))
        .collect();
    store.put_spans(&ab).expect("put");
    store
        .put_spans(&[llm("solo", "solo-1", 0, 10, "gpt-4o", (1, 1), None)])
        .expect("put");
    assert!(store.check().expect("check").is_clean());

    // Orphans as a lost delete would leave them: summary, index entries and postings, no spans.
    for orphan in ["0lonely", "aa", "lonely"] {
        let span_id = format!("{orphan}-1");
        store
            .put_spans(&[llm(orphan, &span_id, 0, 10, "gpt-4o", (1, 1), None)])
            .expect("put");
        let (_, start) = store.locate_span(&span_id).expect("locate").expect("span");
        store.remove_raw(&span_key(orphan, start, &span_id));
        store.remove_raw(&span_id_key(&span_id));
        store.remove_raw(&call_key(start, orphan, &span_id));
    }
    let (_, solo_start) = store.locate_span("solo-1").expect("locate").expect("solo");
    store.insert_raw(&span_key("solo", solo_start, "solo-1"), b"not json");
    let report = store.check().expect("check");
    for orphan in ["0lonely", "aa", "lonely"] {
        assert!(
            report
                .problems
                .contains(&format!("summary of trace {orphan} has no spans")),
            "{orphan}: {:?}",
            report.problems
        );
    }
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.contains("solo/solo-1 does not decode")),
        "{:?}",
        report.problems
    );
    assert_eq!(
        report.problem_count, 4,
        "the 3 orphans and the span, nothing else: {:?}",
        report.problems
    );
    assert_eq!(report.traces, 5, "a, ab, b, c and solo: {report:?}");
    assert_eq!(report.summaries, 8, "5 traces' and 3 orphans: {report:?}");
}

#[test]
fn check_reports_each_kind_of_corruption() {
    type Corruption = Box<dyn Fn(&Store)>;
    let cases: Vec<(&str, Corruption, &str)> = vec![
        (
            "stray key",
            Box::new(|s: &Store| s.insert_raw(b"zzz", b"1")),
            "unknown key",
        ),
        (
            "missing i",
            Box::new(|s: &Store| s.remove_raw(&span_id_key("call1"))),
            "no `i` record",
        ),
        (
            "i elsewhere",
            Box::new(|s: &Store| s.insert_raw(&span_id_key("call1"), &span_id_value("b", 7))),
            "points elsewhere",
        ),
        (
            "dangling i",
            Box::new(|s: &Store| s.insert_raw(&span_id_key("ghost"), &span_id_value("a", 7))),
            "has no such span",
        ),
        (
            "missing t",
            Box::new(|s: &Store| {
                let key = s
                    .load_agg("a")
                    .expect("load")
                    .expect("a exists")
                    .index_keys();
                let t = key
                    .iter()
                    .find(|k| k[0] == P_TIME)
                    .expect("a t key")
                    .clone();
                s.remove_raw(&t);
            }),
            "lacks its index entry",
        ),
        (
            "stray x",
            Box::new(|s: &Store| {
                let mut key = index_prefix(F_MODEL, "gpt-4o");
                key.extend_from_slice(&inv(T0).to_be_bytes());
                key.extend_from_slice(b"nosuchtrace");
                s.insert_raw(&key, b"");
            }),
            "whose summary does not list it",
        ),
        (
            "stale summary",
            Box::new(|s: &Store| {
                let mut agg = s.load_agg("a").expect("load").expect("a exists");
                agg.input_tokens += 1;
                let key = summary_key("a");
                s.insert_raw(&key, &agg.encode());
            }),
            "differs from a recomputation",
        ),
        (
            "missing summary",
            Box::new(|s: &Store| s.remove_raw(&summary_key("a"))),
            "has spans but no summary",
        ),
        (
            "orphan summary",
            Box::new(|s: &Store| {
                let key = summary_key("lonely");
                s.insert_raw(&key, &Agg::new("lonely").encode());
            }),
            "has no spans",
        ),
        (
            "orphan call",
            Box::new(|s: &Store| s.insert_raw(&call_key(T0, "a", "ghost"), b"{}")),
            "has no span",
        ),
        (
            "missing call",
            Box::new(|s: &Store| s.remove_raw(&call_key(T0 + 10_000, "a", "call1"))),
            "has no `l` record",
        ),
        (
            "undecodable span",
            Box::new(|s: &Store| s.insert_raw(&span_key("a", T0, "root"), b"not json")),
            "does not decode",
        ),
        (
            "call record of a span that is not a call",
            Box::new(|s: &Store| {
                let (trace, start) = s.locate_span("tool1").expect("locate").expect("tool1");
                s.insert_raw(&call_key(start, &trace, "tool1"), b"");
            }),
            "belongs to a span that is not a call",
        ),
        (
            "missing posting block",
            Box::new(|s: &Store| {
                let (key, _) = s
                    .tree
                    .scan_prefix([P_TERM])
                    .next()
                    .expect("a posting block")
                    .expect("scan");
                s.remove_raw(&key);
            }),
            "lacks its posting",
        ),
        (
            "malformed index key",
            Box::new(|s: &Store| s.insert_raw(&[P_TIME, 1, 2], b"")),
            "is malformed",
        ),
        (
            "stale list row",
            Box::new(|s: &Store| {
                let agg = s.load_agg("a").expect("load").expect("a exists");
                let mut row = agg.summary();
                row.span_count += 1;
                s.insert_raw(&agg.time_key(), &encode_row(&row));
            }),
            "holds a list row that differs",
        ),
    ];
    for (name, corrupt_it, expected) in cases {
        let (_dir, store) = busy_store();
        corrupt_it(&store);
        let report = store.check().expect("check");
        assert!(!report.is_clean(), "{name}: a corrupted store is reported");
        assert!(
            report.problems.iter().any(|p| p.contains(expected)),
            "{name}: the report says {expected:?}: {:?}",
            report.problems
        );
        // A `t` entry that is missing, stray or malformed changes the rows' digest too, but
        // is reported once, as an index problem.
        assert!(
            !report
                .problems
                .iter()
                .any(|p| p.contains("list rows of the `t` entries")),
            "{name}: no vague report about rows: {:?}",
            report.problems
        );
    }
}

/// The trace list without filters reads each trace's row from its `t` entry; the row follows
/// every change of the summary, and an empty row (a store written before rows) is read from
/// the summary instead, which `check` accepts.
#[test]
fn list_rows_in_the_time_index_follow_the_summary_and_empty_ones_fall_back() {
    let (_dir, store) = busy_store();
    let rows = |store: &Store| -> Vec<(Vec<u8>, Vec<u8>)> {
        store
            .tree
            .scan_prefix([P_TIME])
            .map(|item| {
                let (k, v) = item.expect("scan");
                (k.to_vec(), v.to_vec())
            })
            .collect()
    };
    let page = |store: &Store| {
        store
            .list_traces(&TraceQuery {
                limit: 10,
                ..TraceQuery::default()
            })
            .expect("list")
            .traces
    };
    for (key, value) in rows(&store) {
        let (_, trace_id) = parse_position(&key[1..]).expect("a position");
        let agg = store.load_agg(trace_id).expect("load").expect("summary");
        assert_eq!(value, agg.row(), "trace {trace_id}'s row is its summary's");
        assert_eq!(
            decode_row(&key, &value, trace_id).expect("decodes"),
            agg.summary()
        );
    }
    let listed = page(&store);
    assert_eq!(listed.len(), 3);
    for t in &listed {
        assert_eq!(
            t,
            &summary(&store, &t.trace_id),
            "a listed row is the trace's summary"
        );
    }

    // A later span that keeps the trace's position changes its row.
    let before = summary(&store, "a");
    store
        .put_spans(&[llm("a", "late-call", 900, 5, "o3-mini", (7, 3), Some(0.25))])
        .expect("put");
    let after = summary(&store, "a");
    assert_eq!(after.start_time, before.start_time, "same position");
    assert_eq!(after.span_count, before.span_count + 1);
    let listed_a = page(&store)
        .into_iter()
        .find(|t| t.trace_id == "a")
        .expect("a is listed");
    assert_eq!(listed_a, after, "the list shows the updated row");

    // Rows emptied as an older version wrote them: the list reads the summaries instead.
    let expected = page(&store);
    for (key, _) in rows(&store) {
        store.insert_raw(&key, b"");
    }
    assert_eq!(page(&store), expected, "empty rows list the same page");
    let report = store.check().expect("check");
    assert!(
        report.is_clean(),
        "empty rows are not a problem: {report:?}"
    );
    // The next write of a trace gives it a row again.
    store
        .put_spans(&[span("b", "late-b", 950, 1)])
        .expect("put");
    let agg = store.load_agg("b").expect("load").expect("b");
    let row = store
        .tree
        .get(agg.time_key())
        .expect("get")
        .expect("t entry");
    assert_eq!(row.as_ref(), agg.row().as_slice());
    assert!(store.check().expect("check").is_clean());
}

#[test]
fn retention_by_age_deletes_only_traces_that_started_before_the_cutoff() {
    let (_dir, store) = temp_store();
    for (i, trace) in ["old-1", "old-2", "new-1"].iter().enumerate() {
        let spans: Vec<Span> = agent_trace(trace)
            .into_iter()
            .map(|s| {
                s.with(|s| {
                    s.span_id = format!("{}-{i}", s.span_id);
                    s.parent_span_id = s.parent_span_id.take().map(|p| format!("{p}-{i}"));
                    let shift = i as u64 * 3_600_000_000;
                    s.start_time = Timestamp(s.start_time.micros() + shift);
                    s.end_time = Timestamp(s.end_time.micros() + shift);
                })
            })
            .collect();
        store.put_spans(&spans).expect("put");
    }
    // Cut between old-2 (T0 + 1 h) and new-1 (T0 + 2 h).
    let cutoff = Timestamp(T0 + 90 * 60 * 1_000_000);
    assert_eq!(
        store
            .enforce_retention(Some(cutoff), None)
            .expect("retention"),
        2,
        "both traces that started before the cutoff are deleted"
    );
    assert_eq!(list(&store, |_| {}), ["new-1"], "the newer trace is kept");
    assert_eq!(store.retention_deleted(), 2, "deletions are counted");
    let report = store.check().expect("check");
    assert!(
        report.is_clean(),
        "retention keeps indexes consistent: {report:?}"
    );
    assert_eq!(
        store
            .enforce_retention(Some(cutoff), None)
            .expect("retention"),
        0,
        "a second pass finds nothing to delete"
    );
}

/// What a delete says it freed is what the store's live data lost, the `t` entry's list row
/// included (retention by size counts on it).
#[test]
fn a_delete_reports_the_bytes_it_frees() {
    let (_dir, store) = busy_store();
    // The journal is folded by the first delete, so the second frees only its trace's records.
    store
        .delete_trace_measured("c")
        .expect("delete")
        .expect("c existed");
    let before = store.live_bytes().expect("live");
    let freed = store
        .delete_trace_measured("b")
        .expect("delete")
        .expect("b existed");
    let after = store.live_bytes().expect("live");
    assert_eq!(
        before - after,
        freed,
        "freed bytes match the live data's drop"
    );
}

#[test]
fn retention_by_size_deletes_the_oldest_traces_until_the_live_data_fits() {
    let (_dir, store) = temp_store();
    let big = "x".repeat(20_000);
    for i in 0..20u64 {
        let s = span(&format!("t{i:02}"), &format!("s{i:02}"), i * 1000, 10)
            .with(|s| s.input = json!(big.clone()));
        store.put_spans(&[s]).expect("put");
    }
    store.flush().expect("flush");
    let live = store.live_bytes().expect("live");
    assert_eq!(
        store
            .enforce_retention(None, Some(store.size_on_disk() + 1))
            .expect("retention"),
        0,
        "a store under its limit loses nothing"
    );
    let max = live / 2;
    assert!(store.size_on_disk() > max, "the fixture is over the limit");
    let deleted = store.enforce_retention(None, Some(max)).expect("retention");
    assert!(deleted >= 10, "at least half the traces go: {deleted}");
    assert!(
        store.live_bytes().expect("live") <= max / 10 * 9,
        "the live data ends at most at 90 % of the limit"
    );
    let kept = list(&store, |q| q.limit = 100);
    assert_eq!(kept.len() as u64, 20 - deleted, "the rest are kept");
    let newest: Vec<String> = (0..20u64 - deleted)
        .map(|i| format!("t{:02}", 19 - i))
        .collect();
    assert_eq!(kept, newest, "the oldest traces go first");
    let report = store.check().expect("check");
    assert!(
        report.is_clean(),
        "retention keeps indexes consistent: {report:?}"
    );
}

#[test]
fn data_survives_reopening_the_directory() {
    let dir = tempfile::tempdir().expect("temp dir");
    let before = {
        let store = open(dir.path());
        store.put_spans(&agent_trace("t1")).expect("put");
        store.flush().expect("flush");
        summary(&store, "t1")
    };
    let store = open(dir.path());
    assert_eq!(
        summary(&store, "t1"),
        before,
        "the summary is still there after reopening"
    );
    assert_eq!(
        store.get_trace("t1").expect("get").expect("exists").1.len(),
        5,
        "the spans are still there"
    );
    assert_eq!(
        list(&store, |q| q.tag = Some("beta".into())),
        ["t1"],
        "the indexes are still there"
    );
}

/// `Store::open`, retried (bounded) while the error is still the directory lock, in case a
/// loaded machine keeps a dropped handle's threads alive past `open`'s own wait.
fn reopen(dir: &Path) -> Result<Store, StoreError> {
    let mut attempts = 0;
    loop {
        match Store::open(dir, &StoreOptions::default()) {
            Err(StoreError::Open { source, .. }) if is_lock_error(&source) && attempts < 5 => {
                attempts += 1;
            }
            other => return other,
        }
    }
}

/// Marks `store` (open on `dir`) as schema `old`, closes it and opens it again: the reopened
/// store must have been upgraded in place.
fn reopen_from_schema(store: Store, dir: &Path, old: &str) -> Store {
    store
        .tree
        .insert(SCHEMA_KEY, old.as_bytes())
        .expect("insert");
    store.flush().expect("flush");
    drop(store);
    let store = reopen(dir).unwrap_or_else(|e| panic!("a schema-{old} store opens: {e}"));
    assert_eq!(
        store.tree.get(SCHEMA_KEY).expect("get").as_deref(),
        Some(&b"7"[..]),
        "upgraded in place"
    );
    store
}

#[test]
fn a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(dir.path());
    store.tree.insert(SCHEMA_KEY, &b"8"[..]).expect("insert");
    store.flush().expect("flush");
    drop(store);
    let err = reopen(dir.path())
        .err()
        .expect("a newer schema must not open");
    assert!(
        matches!(err, StoreError::Schema { ref found, supported: 7 } if found == "8"),
        "the error names both versions: {err}"
    );
}

/// The span records every older layout shares: span JSON under its `s` key, and the span-id
/// record.
fn write_old_spans(old: &sled::Tree, spans: &[Span]) {
    for sp in spans {
        let key = span_key(&sp.trace_id, sp.start_time.micros(), &sp.span_id);
        old.insert(&key, serde_json::to_vec(sp).expect("json"))
            .expect("insert");
        old.insert(
            span_id_key(&sp.span_id),
            span_id_value(&sp.trace_id, sp.start_time.micros()),
        )
        .expect("insert");
    }
}

/// Writes a schema-1 store the way the previous layout did (tree `v1`, JSON spans under the same
/// `s` keys, JSON summaries, no postings), then opens it with this binary.
#[test]
fn a_schema_1_store_is_migrated_at_open_and_then_searchable() {
    let dir = tempfile::tempdir().expect("temp dir");
    let spans = agent_trace("old-1");
    {
        let db = sled::Config::new()
            .path(dir.path())
            .open()
            .expect("sled opens");
        let old = db.open_tree("v1").expect("tree v1");
        old.insert(SCHEMA_KEY, &b"1"[..]).expect("insert");
        write_old_spans(&old, &spans);
        // An unreadable span is skipped (and logged), not a reason to refuse the store.
        old.insert(span_key("old-2", T0, "broken"), &b"not json"[..])
            .expect("insert");
        // A schema-1 summary was JSON: the new layout must never try to read it.
        old.insert(summary_key("old-1"), &b"{\"trace_id\":\"old-1\"}"[..])
            .expect("insert");
        db.flush().expect("flush");
    }
    let store = reopen(dir.path()).expect("a schema-1 store opens (migrated)");
    let (summary, got) = store
        .get_trace("old-1")
        .expect("get")
        .expect("the migrated trace is there");
    assert_eq!(got.len(), spans.len(), "every span was migrated");
    assert!(
        store.get_trace("old-2").expect("get").is_none(),
        "the unreadable span was skipped"
    );
    assert_eq!(
        summary.span_count,
        spans.len() as u64,
        "the summary was rebuilt"
    );
    assert_migrated(store, dir.path(), "old-1", &spans, "v1");
}

/// Writes a schema-2 store the way that layout did (tree `v2`, JSON spans under the same `s`
/// keys, one empty-valued key per posting), then opens it with this binary: the postings are
/// rebuilt as blocks and the old tree is dropped.
#[test]
fn a_schema_2_store_is_migrated_at_open_and_then_searchable() {
    let dir = tempfile::tempdir().expect("temp dir");
    let spans = agent_trace("old-2");
    {
        let db = sled::Config::new()
            .path(dir.path())
            .open()
            .expect("sled opens");
        let old = db.open_tree("v2").expect("tree v2");
        old.insert(SCHEMA_KEY, &b"2"[..]).expect("insert");
        write_old_spans(&old, &spans);
        // A schema-2 posting: one key per (term, trace), empty value. Never read by schema 3.
        let posting = [
            &term_prefix("oldterm")[..],
            &inv(T0).to_be_bytes(),
            b"old-2",
        ]
        .concat();
        old.insert(posting, &b""[..]).expect("insert");
        db.flush().expect("flush");
    }
    let store = reopen(dir.path()).expect("a schema-2 store opens (migrated)");
    let (summary, got) = store
        .get_trace("old-2")
        .expect("get")
        .expect("the migrated trace is there");
    assert_eq!(got.len(), spans.len(), "every span was migrated");
    assert_eq!(summary.span_count, spans.len() as u64);
    assert!(
        list(&store, |q| q.q = s("oldterm")).is_empty(),
        "nothing of the old posting keys is carried over"
    );
    assert_migrated(store, dir.path(), "old-2", &spans, "v2");
}

/// What every migrated store must show: it checks clean with postings built for the migrated
/// spans, full-text search finds `trace`, the old tree is dropped, and all of it is durable.
fn assert_migrated(store: Store, dir: &Path, trace: &str, spans: &[Span], old_tree: &str) {
    let report = store.check().expect("check");
    assert!(
        report.is_clean(),
        "a migrated store checks clean: {report:?}"
    );
    assert!(
        report.postings > 0,
        "postings were built for the migrated spans"
    );
    let name = spans[0].name.clone();
    assert_eq!(
        list(&store, |q| q.q = Some(name.clone())),
        [trace],
        "the migrated trace is found by full-text search"
    );
    assert!(
        !store
            .db
            .tree_names()
            .iter()
            .any(|n| n.as_ref() == old_tree.as_bytes()),
        "the old tree is dropped after the migration"
    );
    drop(store);
    let store = reopen(dir).expect("reopens");
    assert!(
        store.get_trace(trace).expect("get").is_some(),
        "the migration is durable"
    );
}

#[test]
fn a_tree_of_a_newer_layout_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    {
        let db = sled::Config::new()
            .path(dir.path())
            .open()
            .expect("sled opens");
        let newer = db.open_tree("v4").expect("tree v4");
        newer.insert(SCHEMA_KEY, &b"7"[..]).expect("insert");
        db.flush().expect("flush");
    }
    let err = reopen(dir.path())
        .err()
        .expect("a store written by a newer binary must not open");
    assert!(
        matches!(err, StoreError::NewerTree { ref tree, supported: 7 } if tree == "v4"),
        "the error names the tree and this binary's schema: {err}"
    );
}

#[test]
fn open_waits_for_a_lock_released_shortly_after() {
    let dir = tempfile::tempdir().expect("temp dir");
    let first = open(dir.path());
    let holder = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        drop(first);
    });
    let second = Store::open(dir.path(), &StoreOptions::default());
    holder.join().expect("the holder thread ends");
    assert!(
        second.is_ok(),
        "open waits for a lock that is released within its wait: {:?}",
        second.err()
    );
}

#[test]
fn open_reports_a_lock_that_stays_held() {
    let dir = tempfile::tempdir().expect("temp dir");
    let _held = open(dir.path());
    let began = Instant::now();
    let err = Store::open_waiting(
        dir.path(),
        &StoreOptions::default(),
        Duration::from_millis(100),
    )
    .err()
    .expect("a directory locked by a live handle does not open");
    assert!(
        matches!(&err, StoreError::Open { source, .. } if is_lock_error(source)),
        "the error is the lock error: {err}"
    );
    assert!(
        began.elapsed() >= Duration::from_millis(100),
        "open retried for its whole wait before giving up"
    );
}

#[test]
fn reservoir_keeps_every_value_up_to_its_cap_then_a_bounded_uniform_sample() {
    let mut small = Reservoir::new(10);
    for v in 0..10 {
        small.add(f64::from(v));
    }
    assert_eq!(
        small.values,
        (0..10).map(f64::from).collect::<Vec<_>>(),
        "up to the cap every value is kept, so quantiles are exact"
    );

    let fill = || {
        let mut r = Reservoir::new(1000);
        for v in 1..=100_000 {
            r.add(f64::from(v));
        }
        r
    };
    let (a, b) = (fill(), fill());
    assert_eq!(a.values.len(), 1000, "the sample never grows past its cap");
    assert_eq!(a.seen, 100_000, "every value is seen");
    assert_eq!(
        a.values, b.values,
        "the fixed seed makes sampling reproducible"
    );
    let q = quantiles(a.values);
    let near = |got: Option<f64>, want: f64| got.is_some_and(|g| (g - want).abs() < 5_000.0);
    assert!(
        near(q.p50, 50_000.0) && near(q.p95, 95_000.0) && near(q.p99, 99_000.0),
        "sampled quantiles stay close to the true ones: {q:?}"
    );
}

#[test]
fn stats_count_calls_tokens_cost_and_quantiles() {
    let (_dir, store) = temp_store();
    let mut spans = Vec::new();
    for i in 0..10u64 {
        let model = if i < 6 { "gpt-4o" } else { "claude" };
        let cost = (i % 2 == 0).then_some(0.01);
        let mut s = llm(
            "t",
            &format!("c{i}"),
            i * 1000,
            (i + 1) * 10,
            model,
            (i, 2 * i),
            cost,
        );
        if i == 3 || i == 7 {
            s = s.with(failed("boom"));
        }
        if i < 4 {
            let l = s.llm.as_mut().expect("llm");
            l.stream = true;
            l.ttft_ms = Some(i as f64 + 1.0);
        }
        spans.push(s);
    }
    spans.push(span("t", "chain", 0, 20_000)); // not a call: ignored by stats
    spans.push(
        llm("u", "nostream", 0, 5, "x", (0, 0), None)
            .with(|s| s.llm.as_mut().expect("llm").ttft_ms = Some(99.0)),
    );
    store.put_spans(&spans).expect("put");

    let window = StatsQuery {
        since: Some(Timestamp(T0)),
        until: Some(Timestamp(T0 + 10_000_000)),
        group_by_model: true,
        series: None,
    };
    let st = store.stats(&window).expect("stats");
    let t = &st.total;
    assert_eq!(
        t.calls, 11,
        "every call span in the window counts, chain spans do not"
    );
    assert_eq!(t.errors, 2, "errors count error-status calls");
    assert_eq!(
        (t.input_tokens, t.output_tokens),
        (45, 90),
        "tokens are summed"
    );
    let cost = t.cost_usd.expect("some calls had a cost");
    assert!(
        (cost - 0.05).abs() < 1e-12,
        "cost sums the known costs, got {cost}"
    );
    // Latencies: 5, 10, 20, ..., 100 ms → nearest rank p50 = 6th = 50, p95 = p99 = 11th = 100.
    assert_eq!(
        t.latency_ms,
        Quantiles {
            p50: Some(50.0),
            p95: Some(100.0),
            p99: Some(100.0)
        },
        "nearest-rank latency quantiles"
    );
    assert_eq!(
        t.ttft_ms,
        Quantiles {
            p50: Some(2.0),
            p95: Some(4.0),
            p99: Some(4.0)
        },
        "ttft counts streamed calls only"
    );

    let groups = st.groups.expect("group_by_model gives rows");
    let models: Vec<(&str, u64)> = groups
        .iter()
        .map(|g| (g.model.as_deref().unwrap_or("-"), g.calls))
        .collect();
    assert_eq!(
        models,
        [("gpt-4o", 6), ("claude", 4), ("x", 1)],
        "groups are per model, by calls desc"
    );
    assert_eq!(groups[1].errors, 1, "group errors are per model");
    assert_eq!(
        groups[2].cost_usd, None,
        "a group without known cost has cost null"
    );

    let narrow = StatsQuery {
        since: Some(Timestamp(T0 + 2_000_000)),
        until: Some(Timestamp(T0 + 4_000_000)),
        group_by_model: false,
        series: None,
    };
    let st = store.stats(&narrow).expect("stats");
    assert_eq!(st.total.calls, 2, "since is inclusive and until exclusive");
    assert_eq!(st.groups, None, "no groups unless asked");
    let empty = store
        .stats(&StatsQuery {
            since: Some(Timestamp(T0 * 2)),
            ..StatsQuery::default()
        })
        .expect("stats");
    assert_eq!(
        empty.total,
        StatsRow::default(),
        "an empty window has zero counts and null quantiles"
    );
}

#[test]
fn quantiles_use_nearest_rank() {
    assert_eq!(
        quantiles(vec![]),
        Quantiles::default(),
        "no values, no quantiles"
    );
    assert_eq!(
        quantiles(vec![7.0]),
        Quantiles {
            p50: Some(7.0),
            p95: Some(7.0),
            p99: Some(7.0)
        },
        "one value is every quantile"
    );
    let hundred: Vec<f64> = (1..=100).rev().map(f64::from).collect();
    assert_eq!(
        quantiles(hundred),
        Quantiles {
            p50: Some(50.0),
            p95: Some(95.0),
            p99: Some(99.0)
        },
        "rank ceil(p·n)"
    );
}

#[test]
fn series_covers_the_window_in_clock_aligned_buckets_and_caps_their_number() {
    let minute = 60_000_000;
    let s = Series::covering(T0 + 30_000_000, T0 + 150_000_000, minute).expect("3 buckets");
    assert_eq!(s.first_us % minute, 0, "buckets start on the minute");
    assert!(s.first_us <= T0 + 30_000_000 && s.first_us + minute > T0 + 30_000_000);
    assert_eq!(s.count, 3, "0:30..=2:30 touches three minutes");
    assert_eq!(
        Series::covering(0, (MAX_BUCKETS as u64) * 1000, 1000),
        Err(MAX_BUCKETS as u64 + 1),
        "one bucket too many is refused with the count needed"
    );
    assert!(Series::covering(0, (MAX_BUCKETS as u64) * 1000 - 1, 1000).is_ok());
}

#[test]
fn stats_series_fills_dense_buckets_from_the_same_scan() {
    let (_dir, store) = temp_store();
    // T0 is a whole second; calls at 0.5 s, 1.2 s, 1.7 s (error) and 3.1 s, two models.
    store
        .put_spans(&[
            llm("a", "c1", 500, 10, "gpt-4o", (1, 2), Some(0.5)),
            llm("a", "c2", 1200, 20, "gpt-4o-mini", (3, 4), None),
            llm("b", "c3", 1700, 40, "gpt-4o", (5, 6), Some(0.25)).with(failed("boom")),
            llm("b", "c4", 3100, 80, "gpt-4o", (7, 8), None),
            span("b", "chain", 0, 4000),
        ])
        .expect("put");
    let q = StatsQuery {
        since: Some(Timestamp(T0)),
        until: Some(Timestamp(T0 + 4_000_000)),
        group_by_model: true,
        series: Some(Series::covering(T0, T0 + 3_999_999, 1_000_000).expect("4 buckets")),
    };
    let st = store.stats(&q).expect("stats");
    assert_eq!(st.bucket_seconds, Some(1));
    let series = st.series.expect("a series was asked for");
    let calls: Vec<u64> = series.iter().map(|r| r.stats.calls).collect();
    assert_eq!(calls, [1, 2, 0, 1], "calls per second, the empty one kept");
    assert_eq!(series[1].stats.errors, 1);
    assert_eq!(
        (series[1].stats.input_tokens, series[1].stats.output_tokens),
        (8, 10)
    );
    assert_eq!(series[1].stats.latency_ms.p95, Some(40.0));
    assert_eq!(
        series[2].stats.latency_ms.p50, None,
        "empty bucket: no quantiles"
    );
    assert_eq!(series[0].start, Timestamp(T0));
    assert_eq!(series[0].end, Timestamp(T0 + 1_000_000));
    assert_eq!(series[3].end, Timestamp(T0 + 4_000_000));
    let models = series[1].models.as_ref().expect("per-model counts");
    let names: Vec<(&str, u64, u64)> = models
        .iter()
        .map(|m| (m.model.as_str(), m.calls, m.errors))
        .collect();
    assert_eq!(names, [("gpt-4o", 1, 1), ("gpt-4o-mini", 1, 0)]);
    assert_eq!(
        series[0].models.as_ref().map(|m| m[0].cost_usd),
        Some(Some(0.5))
    );
    assert_eq!(
        series.iter().map(|r| r.stats.calls).sum::<u64>(),
        st.total.calls,
        "the series adds up to the totals"
    );
}

#[test]
fn series_names_a_bounded_number_of_models() {
    let (_dir, store) = temp_store();
    let spans: Vec<Span> = (0..(MAX_SERIES_MODELS as u64 + 5))
        .map(|i| {
            llm(
                "t",
                &format!("c{i}"),
                i,
                1,
                &format!("m{i:02}"),
                (0, 0),
                None,
            )
        })
        .collect();
    store.put_spans(&spans).expect("put");
    let q = StatsQuery {
        group_by_model: true,
        series: Some(Series::covering(T0, T0 + 1_000_000, 10_000_000).expect("one bucket")),
        ..StatsQuery::default()
    };
    let st = store.stats(&q).expect("stats");
    let models = st.series.expect("series")[0]
        .models
        .clone()
        .expect("models");
    assert_eq!(
        models.len(),
        MAX_SERIES_MODELS + 1,
        "the named ones plus (other)"
    );
    let other = models
        .iter()
        .find(|m| m.model == OTHER_MODELS)
        .expect("other");
    assert_eq!(other.calls, 5, "later models are folded into (other)");
}

#[test]
fn call_bounds_are_the_first_and_last_call_in_the_window() {
    let (_dir, store) = temp_store();
    assert_eq!(store.call_bounds(None, None).expect("bounds"), None);
    store
        .put_spans(&[
            llm("t", "a", 5, 1, "m", (0, 0), None),
            llm("t", "b", 9, 1, "m", (0, 0), None),
            llm("t", "c", 20, 1, "m", (0, 0), None),
            span("t", "chain", 0, 100),
        ])
        .expect("put");
    assert_eq!(
        store.call_bounds(None, None).expect("bounds"),
        Some((T0 + 5_000, T0 + 20_000)),
        "chain spans are not calls"
    );
    assert_eq!(
        store
            .call_bounds(Some(Timestamp(T0 + 6_000)), Some(Timestamp(T0 + 20_000)))
            .expect("bounds"),
        Some((T0 + 9_000, T0 + 9_000))
    );
}

#[test]
fn sessions_are_listed_by_latest_activity_with_totals_and_traces_in_order() {
    let (_dir, store) = temp_store();
    let turn = |trace: &str, session: &str, start: u64, cost: Option<f64>| {
        llm(
            trace,
            &format!("{trace}-c"),
            start,
            10,
            "gpt-4o",
            (10, 5),
            cost,
        )
        .with(|s| {
            s.session_id = Some(session.into());
            s.user_id = Some("ada".into());
        })
    };
    store
        .put_spans(&[
            turn("a1", "alpha", 0, Some(0.25)),
            turn("b1", "beta", 100, None),
            turn("a2", "alpha", 200, Some(0.5)).with(failed("boom")),
            turn("g1", "gamma", 300, None),
            turn("b2", "beta", 400, None),
            llm("nosession", "n", 500, 1, "m", (0, 0), None),
        ])
        .expect("put");
    let page = store
        .list_sessions(&SessionQuery {
            limit: 10,
            ..SessionQuery::default()
        })
        .expect("sessions");
    let ids: Vec<&str> = page
        .sessions
        .iter()
        .map(|s| s.session_id.as_str())
        .collect();
    assert_eq!(
        ids,
        ["beta", "gamma", "alpha"],
        "newest activity first, each once"
    );
    let alpha = &page.sessions[2];
    assert_eq!(alpha.trace_count, 2);
    assert_eq!(alpha.errors, 1);
    assert_eq!(alpha.status, Status::Error);
    assert_eq!((alpha.input_tokens, alpha.output_tokens), (20, 10));
    assert_eq!(alpha.cost_usd, Some(0.75));
    assert_eq!(alpha.start_time, Timestamp(T0));
    assert_eq!(alpha.end_time, Timestamp(T0 + 210_000));
    assert_eq!(alpha.last_trace_id, "a2");
    assert_eq!(alpha.user_ids, ["ada"]);
    assert!(alpha.complete);

    // Pages: one session per page, each once.
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = store
            .list_sessions(&SessionQuery {
                limit: 1,
                cursor: cursor.clone(),
                ..SessionQuery::default()
            })
            .expect("page");
        seen.extend(page.sessions.iter().map(|s| s.session_id.clone()));
        match page.next_cursor {
            Some(c) => cursor = Some(Cursor::decode(&c).expect("cursor")),
            None => break,
        }
    }
    assert_eq!(
        seen,
        ["beta", "gamma", "alpha"],
        "pagination lists each once"
    );

    // until: beta's newest before 350 ms is b1, so beta sorts after gamma.
    let page = store
        .list_sessions(&SessionQuery {
            limit: 10,
            until: Some(Timestamp(T0 + 350_000)),
            since: Some(Timestamp(T0 + 150_000)),
            ..SessionQuery::default()
        })
        .expect("window");
    let ids: Vec<&str> = page
        .sessions
        .iter()
        .map(|s| s.session_id.as_str())
        .collect();
    assert_eq!(ids, ["gamma", "alpha"], "sessions active in [since, until)");

    let found = store
        .list_sessions(&SessionQuery {
            limit: 10,
            q: Some("ALP".into()),
            ..SessionQuery::default()
        })
        .expect("q");
    assert_eq!(found.sessions.len(), 1);

    let (s, traces) = store
        .get_session("alpha", 1000)
        .expect("get")
        .expect("exists");
    assert_eq!(s.trace_count, 2);
    let order: Vec<&str> = traces.iter().map(|t| t.trace_id.as_str()).collect();
    assert_eq!(order, ["a1", "a2"], "a session's traces come oldest first");
    let (s, traces) = store.get_session("alpha", 1).expect("get").expect("exists");
    assert!(!s.complete, "a capped session says so");
    assert_eq!(traces.len(), 1);
    assert_eq!(traces[0].trace_id, "a2", "the newest are kept");
    assert!(store.get_session("nope", 10).expect("get").is_none());
}

#[test]
fn embeddings_are_previewed_as_text_not_vectors() {
    assert_eq!(
        input_preview(&json!({"model": "e", "input": ["rotate a key", "revoke it"]})).as_deref(),
        Some("rotate a key · revoke it")
    );
    assert_eq!(
        output_preview(&json!({"object": "list", "data": [
            {"embedding": [0.1, 0.2, 0.3]}, {"embedding": [0.4, 0.5, 0.6]}]}))
        .as_deref(),
        Some("2 embeddings of 3 dimensions")
    );
    assert_eq!(
        output_preview(&json!({"data": [{"embedding": "AAAA"}]})).as_deref(),
        Some("1 embedding"),
        "base64 vectors too"
    );
}

/// Three traces whose LLM calls say different things, for the full-text tests.
fn text_fixture(store: &Store) {
    let said = [
        (
            "ft-1",
            0,
            "gpt-4o",
            "Refund the Invoice, please",
            "The refund is pending",
        ),
        (
            "ft-2",
            1000,
            "gpt-4o-mini",
            "Where is my invoice?",
            "Invoice 42 was emailed",
        ),
        (
            "ft-3",
            2000,
            "gpt-4o",
            "Cancel my plan",
            "Your plan is cancelled; no refund",
        ),
    ];
    for (trace, at, model, question, answer) in said {
        let span = llm(trace, &format!("{trace}-c"), at, 100, model, (1, 1), None).with(|s| {
            s.input = json!({"messages": [
                {"role": "system", "content": "You are helpful."},
                {"role": "user", "content": question}
            ]});
            s.output = json!({"choices": [{"message": {"content": answer}}]});
        });
        store.put_spans(&[span]).expect("put");
    }
}

#[test]
fn full_text_search_matches_every_term_case_insensitively_newest_first() {
    let (_dir, store) = temp_store();
    text_fixture(&store);
    let q = |text: &str| list(&store, |q| q.q = s(text));
    assert_eq!(
        q("refund"),
        ["ft-3", "ft-1"],
        "a term in the input or the output"
    );
    assert_eq!(q("INVOICE"), ["ft-2", "ft-1"], "terms are case-insensitive");
    assert_eq!(
        q("refund invoice"),
        ["ft-1"],
        "several terms must all match (AND)"
    );
    assert_eq!(q("invoice, 42!"), ["ft-2"], "punctuation separates terms");
    assert_eq!(
        q("refun"),
        Vec::<String>::new(),
        "a term matches whole words only"
    );
    assert_eq!(
        q("nowhere"),
        Vec::<String>::new(),
        "an unknown term matches nothing"
    );
    assert_eq!(
        q("helpful"),
        ["ft-3", "ft-2", "ft-1"],
        "system prompts are indexed too"
    );
    assert_eq!(
        q(" ?! "),
        ["ft-3", "ft-2", "ft-1"],
        "a query without terms filters nothing"
    );
    assert_eq!(
        q("ft"),
        ["ft-3", "ft-2", "ft-1"],
        "trace ids are searchable"
    );
    assert_eq!(
        list(&store, |q| (q.q, q.model) = (s("refund"), s("gpt-4o"))),
        ["ft-3", "ft-1"],
        "q combines with an indexed filter"
    );
    assert_eq!(
        list(&store, |q| (q.q, q.model) = (s("invoice"), s("gpt-4o"))),
        ["ft-1"],
        "q and the filter intersect"
    );
    assert_eq!(
        list(&store, |q| (q.q, q.until) =
            (s("refund"), Some(Timestamp(T0 + 2_000_000)))),
        ["ft-1"],
        "q combines with the time window"
    );
}

#[test]
fn full_text_pages_follow_the_cursor_and_postings_follow_deletes() {
    let (_dir, store) = temp_store();
    text_fixture(&store);
    let mut seen = Vec::new();
    let mut cursor = None;
    for _ in 0..10 {
        let page = store
            .list_traces(&TraceQuery {
                limit: 1,
                cursor: cursor.take(),
                q: s("you refund is"),
                ..TraceQuery::default()
            })
            .expect("list");
        seen.extend(ids(&page).into_iter().map(String::from));
        match page.next_cursor {
            Some(c) => cursor = Cursor::decode(&c),
            None => break,
        }
    }
    assert_eq!(
        seen,
        ["ft-3", "ft-1"],
        "pages of an intersection, each trace once"
    );

    assert!(store.delete_trace("ft-1").expect("delete"));
    assert_eq!(
        list(&store, |q| q.q = s("refund")),
        ["ft-3"],
        "a deleted trace is not found"
    );
    assert!(
        store
            .tree
            .scan_prefix([P_TERM])
            .map(|kv| kv.expect("scan"))
            .all(|(k, v)| !contains(&k, b"ft-1") && !contains(&v, b"ft-1")),
        "deleting a trace removes its postings"
    );
    let report = store.check().expect("check");
    assert!(
        report.is_clean(),
        "postings agree with summaries: {report:?}"
    );
    assert!(report.postings > 0, "check counts the postings");

    let ghost = [&[0u8; 8][..], b"ft-2"].concat();
    store.insert_raw(
        &[&term_prefix("ghost")[..], &ghost].concat(),
        &encode_block(std::slice::from_ref(&ghost)),
    );
    let report = store.check().expect("check");
    assert!(
        report.problems.iter().any(|p| p.contains("ghost")),
        "check reports a posting its trace's summary does not list: {report:?}"
    );
}

fn s(text: &str) -> Option<String> {
    Some(text.to_string())
}

#[test]
fn a_summary_read_for_a_query_skips_the_term_set_but_checks_terms_on_it() {
    let mut agg = Agg::new("read-trace");
    for sp in agent_trace("read-trace") {
        agg.merge(&sp);
    }
    let bytes = agg.encode();
    let mut stored: Vec<&String> = agg.terms.iter().collect();
    stored.sort();
    assert!(stored.len() >= 3, "the agent trace has terms: {stored:?}");
    let (a, b, c) = (
        stored[0].clone(),
        stored[1].clone(),
        stored[stored.len() - 1].clone(),
    );
    let absent = "zz-not-a-term-of-this-trace".to_string();

    let read = ReadAgg::decode(b"k", &bytes, &[]).expect("decodes");
    let mut without_terms = agg.clone();
    without_terms.terms = TermSet::default();
    assert_eq!(
        read.agg(),
        &without_terms,
        "every field but the terms is read"
    );
    assert!(read.agg().terms.is_empty(), "the term set is not built");

    let q = TraceQuery::default();
    for (wanted, expect) in [
        (vec![], true),
        (vec![a.clone()], true),
        (vec![c.clone(), a.clone(), b.clone()], true),
        (vec![absent.clone()], false),
        (vec![a.clone(), absent.clone()], false),
        (vec![absent.clone(), c.clone()], false),
    ] {
        let read = ReadAgg::decode(b"k", &bytes, &wanted).expect("decodes");
        assert_eq!(read.matches(&q), expect, "terms {wanted:?}");
        assert_eq!(
            expect,
            wanted.iter().all(|t| agg.terms.contains(t)),
            "the full set agrees for {wanted:?}"
        );
    }
    // The other filters still apply.
    let other_model = TraceQuery {
        model: Some("no-such-model".into()),
        ..TraceQuery::default()
    };
    assert!(!ReadAgg::decode(b"k", &bytes, &[a])
        .expect("decodes")
        .matches(&other_model));

    for cut in [0, 1, bytes.len() / 2, bytes.len() - 1] {
        assert!(
            ReadAgg::decode(b"k", &bytes[..cut], &[]).is_err(),
            "a summary cut to {cut} bytes is reported corrupt when read for a query too"
        );
    }
}

#[test]
fn binary_summaries_and_call_records_round_trip_and_reject_truncation() {
    let mut agg = Agg::new("codec-trace");
    for sp in agent_trace("codec-trace") {
        agg.merge(&sp);
    }
    assert!(agg.first_error.is_some() && agg.root.is_some() && !agg.terms.is_empty());
    let bytes = agg.encode();
    assert_eq!(
        Agg::decode(b"k", &bytes).expect("decodes"),
        agg,
        "a summary round-trips"
    );
    for cut in [0, 1, bytes.len() / 2, bytes.len() - 1] {
        assert!(
            Agg::decode(b"k", &bytes[..cut]).is_err(),
            "a summary cut to {cut} bytes is reported corrupt, not misread"
        );
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(
        Agg::decode(b"k", &longer).is_err(),
        "trailing bytes are corrupt"
    );

    for sp in agent_trace("codec-trace")
        .iter()
        .filter(|s| s.kind.is_call())
    {
        let rec = CallRec::of(sp);
        let bytes = rec.encode();
        assert_eq!(CallRec::decode(b"k", &bytes).expect("decodes"), rec);
        assert!(CallRec::decode(b"k", &bytes[..bytes.len() - 1]).is_err());
    }
}

#[test]
fn a_trace_keeps_its_smallest_terms_whatever_the_arrival_order() {
    // 3 spans of 120 distinct words each: more than a trace keeps.
    let spans: Vec<Span> = (0..3)
        .map(|i| {
            let words: Vec<String> = (0..120).map(|w| format!("w{i}x{w:03}")).collect();
            span("many-words", &format!("s{i}"), i * 10, 5)
                .with(|s| s.input = json!(words.join(" ")))
        })
        .collect();
    let merged = |order: &[usize]| {
        let mut agg = Agg::new("many-words");
        for &i in order {
            agg.merge(&spans[i]);
        }
        agg
    };
    let (a, b) = (merged(&[0, 1, 2]), merged(&[2, 0, 1]));
    assert_eq!(a.terms.len(), MAX_TRACE_TERMS, "the term set is capped");
    assert_eq!(a, b, "the kept terms do not depend on arrival order");
    assert_eq!(a.encode(), b.encode(), "nor do the stored bytes");
    let mut all: Vec<String> = b.terms.iter().cloned().collect();
    all.sort();
    assert!(
        a.terms.contains("w0x000") && !a.terms.contains("w2x119"),
        "the smallest terms are the ones kept: {:?}",
        all.last()
    );
}

/// Posting lists longer than one block, written out of time order in batches of every size, then
/// re-timed and partly deleted: pages of `q=` stay exact and newest first, intersections too, and
/// `check` agrees with the blocks.
#[test]
fn posting_blocks_split_and_stay_in_order_through_writes_moves_and_deletes() {
    let (_dir, store) = temp_store();
    const N: u64 = 300;
    let start_of = |i: u64| (i * 7919) % N * 10; // a permutation: arrival order ≠ time order
    let make = |i: u64, start_ms: u64| {
        span(&format!("bk-{i}"), &format!("bk-{i}-s"), start_ms, 5).with(|s| {
            s.input = Value::String(if i % 2 == 1 {
                "shared odd".into()
            } else {
                "shared".into()
            });
        })
    };
    let mut i = 0;
    for size in [1u64, 7, 50, 2, 64, 65, 111].iter().cycle() {
        if i >= N {
            break;
        }
        let batch: Vec<Span> = (i..(i + size).min(N))
            .map(|j| make(j, start_of(j)))
            .collect();
        store.put_spans(&batch).expect("put");
        i += size;
    }
    // Some of the postings are still in the journal (read merged with the blocks), until a
    // fold puts them all in blocks.
    let journalled = store.journal_edits();
    assert!(journalled > 0, "the last writes are journalled");
    let before_fold = store
        .list_traces(&TraceQuery {
            limit: 1000,
            q: s("shared"),
            ..TraceQuery::default()
        })
        .expect("list");
    let report = store.check().expect("check");
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.journal_edits, journalled as u64, "{report:?}");
    assert!(store.fold_journal().expect("fold"));
    assert_eq!(store.journal_edits(), 0);
    let blocks = store.tree.scan_prefix(term_prefix("shared")).count();
    assert!(
        blocks as u64 >= N / BLOCK_POSITIONS as u64,
        "a long list is cut into blocks: {blocks}"
    );
    let newest_first = |keep: &dyn Fn(u64) -> bool| {
        let mut all: Vec<(u64, String)> = (0..N)
            .filter(|&i| keep(i))
            .map(|i| (start_of(i), format!("bk-{i}")))
            .collect();
        all.sort_by(|a, b| b.cmp(a));
        all.into_iter().map(|(_, id)| id).collect::<Vec<_>>()
    };
    let paged = |q: &str| {
        let mut seen = Vec::new();
        let mut cursor = None;
        for _ in 0..100 {
            let page = store
                .list_traces(&TraceQuery {
                    limit: 37,
                    cursor: cursor.take(),
                    q: s(q),
                    ..TraceQuery::default()
                })
                .expect("list");
            seen.extend(ids(&page).into_iter().map(String::from));
            match page.next_cursor {
                Some(c) => cursor = Cursor::decode(&c),
                None => break,
            }
        }
        seen
    };
    assert_eq!(paged("shared"), newest_first(&|_| true), "one list, paged");
    assert_eq!(
        ids(&before_fold),
        newest_first(&|_| true),
        "the same before the journal was folded"
    );
    assert_eq!(
        paged("odd shared"),
        newest_first(&|i| i % 2 == 1),
        "an intersection, paged"
    );
    let report = store.check().expect("check");
    assert!(report.is_clean(), "{report:?}");
    assert!(report.postings >= 2 * N, "{report:?}");

    // Re-timing a trace moves its position in every list.
    store
        .put_spans(&[make(0, N * 10 + 5)])
        .expect("re-send with a later start");
    let mut moved = newest_first(&|i| i != 0);
    moved.insert(0, "bk-0".to_string());
    assert_eq!(
        paged("shared"),
        moved,
        "the journal's new position merged with the blocks'"
    );
    let report = store.check().expect("check");
    assert!(report.is_clean(), "{report:?}");
    assert!(
        report.journal_edits >= 2,
        "moved in the journal: {report:?}"
    );
    // Deleting every third trace.
    for i in (0..N).step_by(3) {
        assert!(store.delete_trace(&format!("bk-{i}")).expect("delete"));
    }
    assert_eq!(
        paged("shared"),
        newest_first(&|i| i % 3 != 0),
        "deleted traces leave the list"
    );
    let report = store.check().expect("check");
    assert!(report.is_clean(), "{report:?}");

    // A block out of order is reported.
    let key = store
        .tree
        .scan_prefix(term_prefix("shared"))
        .next()
        .expect("a block")
        .expect("scan")
        .0;
    let late = [&[0xFFu8; 8][..], b"bk-1"].concat();
    store.insert_raw(&key, &encode_block(&[late]));
    let report = store.check().expect("check");
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.contains("not keyed by its last position") || p.contains("overlaps")),
        "{report:?}"
    );
}

/// Positions of every id shape round-trip through a format-2 block: hex ids packed, others as
/// they are, equal and extreme starts; blocks that are truncated, out of order, carry trailing
/// bytes or an unknown format do not decode.
#[test]
fn posting_blocks_round_trip_every_id_shape_and_reject_bad_ones() {
    let position = |start: u64, id: &str| [&start.to_be_bytes()[..], id.as_bytes()].concat();
    let long_hex = "ab".repeat(64);
    let mut positions = vec![
        position(0, "0"),
        position(0, "00"),
        position(0, "0af1"),
        position(0, "0aF1"),
        position(5, "4bf92f3577b34da6a3ce929d0e0e4736"),
        position(5, "4bf92f3577b34da6a3ce929d0e0e4737"),
        position(5, "my-app:run.7"),
        position(1 << 40, &long_hex),
        position(u64::MAX, "fff"),
        position(u64::MAX, "z"),
    ];
    positions.sort();
    let value = encode_block(&positions);
    assert_eq!(value.first(), Some(&2), "written in format 2");
    let decoded = decode_block(b"k", &value).expect("decodes");
    assert_eq!(
        decoded.iter().map(<[u8]>::to_vec).collect::<Vec<_>>(),
        positions
    );
    let plain: usize = positions.iter().map(|p| p.len() + 1).sum();
    assert!(
        value.len() < plain,
        "smaller than the plain format: {} vs {plain}",
        value.len()
    );

    let hex32 = |i: u64| {
        position(
            T0 - i,
            &format!("{:032x}", i.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
        )
    };
    let mut block: Vec<Vec<u8>> = (0..BLOCK_POSITIONS as u64).map(hex32).collect();
    block.sort();
    let value = encode_block(&block);
    assert!(
        value.len() <= 2 + BLOCK_POSITIONS * 21,
        "generated ids take about 20 bytes a position: {} for {BLOCK_POSITIONS}",
        value.len()
    );

    // The canonical form of the two hand-written cases below decodes.
    let canonical = decode_block(b"k", &[2, 1, 5, 2 * 2 + 1, 0xab]).expect("canonical");
    assert_eq!(canonical.first(), Some(&position(5, "ab")[..]));
    for bad in [
        value[..value.len() - 1].to_vec(),
        [&value[..], &[0][..]].concat(),
        [&[9u8][..], &value[1..]].concat(),
        encode_block(&[position(5, "b"), position(5, "a")]),
        encode_block(&[position(5, "a"), position(5, "a")]),
        vec![2, 0],
        // An odd-length id flagged as packed hex: 3 chars, flag set, one byte.
        [&[2u8, 1, 5][..], &[3 * 2 + 1, 0xab][..]].concat(),
        // A lowercase-hex id stored raw (the encoder packs it): "ab" as is.
        [&[2u8, 1, 5][..], &[2 * 2][..], b"ab"].concat(),
    ] {
        assert!(decode_block(b"k", &bad).is_err(), "{bad:?} is refused");
    }
}

/// A schema-6 store (empty `t` values) is upgraded in place: its traces list as before (from
/// their summaries), `check` finds it clean, and a trace written again gets its row.
#[test]
fn a_schema_6_store_is_upgraded_in_place_and_lists_from_its_summaries() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(dir.path());
    store.put_spans(&agent_trace("old-a")).expect("put");
    store
        .put_spans(
            &agent_trace("old-b")
                .into_iter()
                .map(|s| s.with(|s| s.span_id.push_str("-b")))
                .collect::<Vec<_>>(),
        )
        .expect("put");
    let listed = list(&store, |_| {});
    let keys = keys_with_prefix(&store, P_TIME);
    for key in &keys {
        store.insert_raw(key, b""); // as schema 6 wrote them
    }
    let store = reopen_from_schema(store, dir.path(), "6");
    assert_eq!(
        list(&store, |_| {}),
        listed,
        "the same traces, in the same order"
    );
    assert!(store.check().expect("check").is_clean());
    store
        .put_spans(&[span("old-a", "again", 999, 1)])
        .expect("put");
    let agg = store.load_agg("old-a").expect("load").expect("old-a");
    assert_eq!(
        store.tree.get(agg.time_key()).expect("get").as_deref(),
        Some(agg.row().as_slice()),
        "a trace written again gets its row"
    );
}

/// A schema-5 store (written before sled could log `Link::Batch` fragments) is upgraded in place
/// at open and keeps its data.
#[test]
fn a_schema_5_store_is_upgraded_in_place() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open(dir.path());
    store
        .put_spans(&[span("t-five", "s-five", 0, 10)])
        .expect("put");
    let store = reopen_from_schema(store, dir.path(), "5");
    let trace = store
        .get_trace("t-five")
        .expect("get")
        .expect("the trace is kept");
    assert_eq!(trace.1.len(), 1);
}

/// A schema-3 store (blocks in format 1: positions as they are) is upgraded in place at open:
/// its version key says 6, its blocks still answer `q=` and pass `check`, and the next write that
/// touches one rewrites it in format 2. An older binary would refuse the upgraded store.
#[test]
fn a_schema_3_store_is_upgraded_in_place_and_its_blocks_are_read() {
    let dir = tempfile::tempdir().expect("temp dir");
    let make = |i: u64| {
        span(&format!("f1-{i}"), &format!("f1-{i}-s"), i * 10, 5).with(|s| {
            s.input = Value::String("legacy words".into());
        })
    };
    let store = {
        let store = open(dir.path());
        store
            .put_spans(&(0..40).map(make).collect::<Vec<_>>())
            .expect("put");
        // Schema 3 had no journal: its postings were all in blocks.
        assert!(
            store.fold_journal().expect("fold"),
            "the put was journalled"
        );
        let plain = |positions: &Positions| {
            let mut e = Enc::with_capacity(64);
            e.u8(1);
            e.u64(positions.len() as u64);
            for p in positions.iter() {
                e.u64(p.len() as u64);
                e.raw(p);
            }
            e.0
        };
        let blocks: Vec<(sled::IVec, sled::IVec)> = store
            .tree
            .scan_prefix([P_TERM])
            .collect::<Result<_, _>>()
            .expect("scan");
        assert!(blocks.len() >= 2, "{} blocks", blocks.len());
        for (key, value) in &blocks {
            let positions = decode_block(key, value).expect("decodes");
            store.insert_raw(key, &plain(&positions));
        }
        store
    };
    let store = reopen_from_schema(store, dir.path(), "3");
    let formats = |term: &str| -> Vec<u8> {
        store
            .tree
            .scan_prefix(term_prefix(term))
            .map(|item| item.expect("scan").1[0])
            .collect()
    };
    assert!(formats("legacy").iter().all(|&f| f == 1));
    let search = |q: &str| search(&store, q);
    let newest_first = |n: u64| (0..n).rev().map(|i| format!("f1-{i}")).collect::<Vec<_>>();
    assert_eq!(search("legacy words"), newest_first(40));
    let report = store.check().expect("check");
    assert!(report.is_clean(), "{report:?}");

    store.put_spans(&[make(40)]).expect("put one more");
    assert_eq!(search("legacy"), newest_first(41), "found from the journal");
    assert!(store.fold_journal().expect("fold"));
    assert_eq!(search("legacy"), newest_first(41), "found in the blocks");
    assert_eq!(
        formats("legacy").first(),
        Some(&2),
        "the newest block was rewritten in format 2"
    );
    let report = store.check().expect("check");
    assert!(report.is_clean(), "{report:?}");
}

/// The posting journal (`journal`): small writes log their postings as `j` records that searches
/// read merged with the blocks; the records outlive a reopen; a delete folds them into the
/// blocks; a write that would overflow the journal folds it; `check` counts the journal's edits
/// and reports a record that does not decode, which open skips and the next fold removes.
#[test]
fn posting_journal_is_searched_kept_across_reopen_and_folded() {
    let dir = tempfile::tempdir().expect("temp dir");
    let make = |i: u64| {
        span(&format!("jn-{i}"), &format!("jn-{i}-s"), i * 10, 5).with(|s| {
            s.input = Value::String(format!("alpha beta word{i}"));
        })
    };
    let records = |store: &Store| store.tree.scan_prefix([P_JOURNAL]).count();
    let blocks = |store: &Store, term: &str| store.tree.scan_prefix(term_prefix(term)).count();
    let newest_first = |keep: &dyn Fn(u64) -> bool, n: u64| {
        (0..n)
            .rev()
            .filter(|&i| keep(i))
            .map(|i| format!("jn-{i}"))
            .collect::<Vec<_>>()
    };
    {
        let store = open(dir.path());
        for i in 0..50 {
            store.put_spans(&[make(i)]).expect("put");
        }
        assert_eq!(records(&store), 50, "one journal record per write");
        assert_eq!(blocks(&store, "alpha"), 0, "nothing folded yet");
        assert!(store.journal_edits() >= 150, "{}", store.journal_edits());
        assert_eq!(search(&store, "alpha"), newest_first(&|_| true, 50));
        assert_eq!(search(&store, "beta word7"), ["jn-7"]);
        let report = store.check().expect("check");
        assert!(report.is_clean(), "{report:?}");
        assert_eq!(report.journal_edits, store.journal_edits() as u64);
        assert!(
            report.postings >= 150,
            "journalled postings count: {report:?}"
        );
        // Dropped without a fold, as a crash would leave it.
    }
    let store = reopen(dir.path()).expect("reopen");
    assert_eq!(records(&store), 50, "the records are kept");
    assert_eq!(
        search(&store, "alpha"),
        newest_first(&|_| true, 50),
        "read back at open"
    );
    let report = store.check().expect("check");
    assert!(report.is_clean(), "{report:?}");

    // A delete folds the journal: every record goes, the postings move into blocks.
    let edits = store.journal_edits();
    assert!(store.delete_trace("jn-7").expect("delete"));
    assert_eq!(records(&store), 0);
    assert_eq!(store.journal_edits(), 0);
    assert!(blocks(&store, "alpha") > 0);
    assert_eq!(search(&store, "alpha"), newest_first(&|i| i != 7, 50));
    assert!(search(&store, "word7").is_empty());
    let report = store.check().expect("check");
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(
        report.postings,
        edits as u64 / 50 * 49,
        "every trace has as many terms; one trace's went: {report:?}"
    );

    // Writes fold the journal before it passes its bound.
    let mut folds = 0;
    let mut last = 0;
    let mut i = 50;
    while folds < 2 && i < 2_000 {
        // 60 distinct terms a trace.
        let words: Vec<String> = (0..60).map(|w| format!("w{i}x{w}")).collect();
        store
            .put_spans(&[make(i).with(|s| s.output = Value::String(words.join(" ")))])
            .expect("put");
        let now = store.journal_edits();
        assert!(now <= JOURNAL_MAX_EDITS, "{now}");
        if now < last {
            folds += 1;
            assert_eq!(records(&store), 0, "a fold removes every record");
        }
        last = now;
        i += 1;
    }
    assert_eq!(folds, 2, "the journal folded twice in {} writes", i - 50);
    assert_eq!(search(&store, "alpha").len() as u64, i - 1);
    let report = store.check().expect("check");
    assert!(report.is_clean(), "{report:?}");

    // A record that does not decode: reported, skipped at open, removed by the next fold.
    store.put_spans(&[make(i)]).expect("put");
    let bad = journal_key(1 << 40);
    store.insert_raw(&bad, &[1, 1, 3, b'x']);
    let report = store.check().expect("check");
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.contains("posting journal record") && p.contains("does not decode")),
        "{report:?}"
    );
    drop(store);
    let store = reopen(dir.path()).expect("a store with a bad journal record still opens");
    assert_eq!(
        search(&store, &format!("word{i}")),
        [format!("jn-{i}")],
        "the good records are read"
    );
    assert!(store.fold_journal().expect("fold"));
    assert!(store.tree.get(&bad).expect("get").is_none(), "folded away");
    let report = store.check().expect("check");
    assert!(report.is_clean(), "{report:?}");
}

/// A journal entry wins over the blocks: a position the journal removes is not listed even
/// though its block still holds it, and `check` counts it as gone.
#[test]
fn a_journal_removal_hides_a_posting_its_block_still_holds() {
    let (_dir, store) = temp_store();
    let first = span("jr-1", "jr-1-s", 10, 5).with(|s| s.input = Value::String("gamma".into()));
    store.put_spans(std::slice::from_ref(&first)).expect("put");
    store.fold_journal().expect("fold");
    // The same span again without the term: its removal is journalled, the block keeps it.
    store
        .put_spans(&[first.with(|s| s.input = Value::String("delta".into()))])
        .expect("put");
    assert_eq!(store.tree.scan_prefix(term_prefix("gamma")).count(), 1);
    let position = store
        .load_agg("jr-1")
        .expect("agg")
        .expect("summary")
        .position();
    let mut after = position.clone();
    after.push(0);
    let prefix = term_prefix("gamma");
    assert_eq!(
        store
            .block_seek(&prefix, &position, &after)
            .expect("seek")
            .as_deref(),
        Some(position.as_slice()),
        "the block still holds it"
    );
    assert_eq!(
        store
            .posting_seek(&prefix, &position, &after)
            .expect("seek"),
        None
    );
    assert!(!store.has_posting("gamma", &position).expect("lookup"));
    assert!(store.has_posting("delta", &position).expect("lookup"));
    let report = store.check().expect("check");
    assert!(report.is_clean(), "{report:?}");
}

/// The journal's bound counts every edit logged, so re-sending one span with alternating terms
/// (few distinct entries, ever more records) still folds; a record keyed `u64::MAX` makes one
/// write fold and the numbering start again; malformed keys and records whose terms are not
/// terms are reported by `check`, skipped at open and removed by the next fold.
#[test]
fn the_journal_folds_on_logged_edits_and_clears_foreign_records() {
    let dir = tempfile::tempdir().expect("temp dir");
    let records = |store: &Store| store.tree.scan_prefix([P_JOURNAL]).count();
    let words = |tag: &str| {
        (0..100)
            .map(|w| format!("{tag}{w}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let (odd, even) = (words("odd"), words("even"));
    let make = |text: &str| {
        span("flip", "flip-s", 10, 5).with(|s| s.input = Value::String(text.to_string()))
    };
    {
        let store = open(dir.path());
        let mut folded = false;
        for i in 0..200 {
            let before = records(&store);
            store
                .put_spans(&[make(if i % 2 == 0 { &even } else { &odd })])
                .expect("put");
            if i > 0 && records(&store) < before {
                folded = true;
                break;
            }
        }
        assert!(folded, "200 alternating re-sends (200 edits each) fold");
        let report = store.check().expect("check");
        assert!(report.is_clean(), "{report:?}");
    }
    // Foreign records: one keyed u64::MAX, a malformed key, a term with 0x00 in it.
    {
        let store = reopen(dir.path()).expect("reopen");
        store.insert_raw(&journal_key(u64::MAX), &[1]);
        store.insert_raw(b"jshort", &[1]);
        let position = store
            .load_agg("flip")
            .expect("agg")
            .expect("summary")
            .position();
        let mut bad = vec![1u8, 1, position.len() as u8];
        bad.extend_from_slice(&position);
        bad.extend_from_slice(&[3, b'a', 0, b'b', 0]);
        store.insert_raw(&journal_key(7), &bad);
        let report = store.check().expect("check");
        let named = |what: &str| report.problems.iter().any(|p| p.contains(what));
        assert!(
            named("posting journal key jshort is malformed"),
            "{report:?}"
        );
        assert!(named("does not decode"), "{report:?}");
    }
    let store = reopen(dir.path()).expect("foreign journal records do not keep a store closed");
    store.put_spans(&[make("after one")]).expect("put");
    assert_eq!(
        records(&store),
        0,
        "the write after a record keyed u64::MAX folds"
    );
    store.put_spans(&[make("after two")]).expect("put");
    assert_eq!(records(&store), 1, "and the next one is journalled again");
    let report = store.check().expect("check");
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(search(&store, "two"), ["flip"]);
}

/// A term can be longer than 32 chars once lowercased ('İ' becomes 'i' and a combining dot): its
/// journal record still decodes at the next open, and the trace is still found.
#[test]
fn a_journal_record_with_a_term_that_grew_when_lowercased_is_read_back() {
    let dir = tempfile::tempdir().expect("temp dir");
    let text = "İ".repeat(40);
    {
        let store = open(dir.path());
        store
            .put_spans(&[span("dotted", "dotted-s", 10, 5).with(|s| s.input = json!(text))])
            .expect("put");
        assert!(store.journal_edits() > 0, "journalled");
        assert_eq!(search(&store, &text), ["dotted"]);
    }
    let store = reopen(dir.path()).expect("reopen");
    assert_eq!(
        search(&store, &text),
        ["dotted"],
        "read back from the journal"
    );
    let report = store.check().expect("check");
    assert!(report.is_clean(), "{report:?}");
}

//! Trace propagation: calls sharing IDs form one trace with the right parent links; credentials
//! are never stored.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{all_bytes_under, chat_body, client, contains, MockUpstream, TestProxy};

#[tokio::test]
async fn three_calls_with_one_trace_id_form_one_trace_with_parent_links() {
    let upstream = MockUpstream::start().await.unwrap();
    let mut proxy = TestProxy::start(&upstream.url()).await;
    let secret = "sk-live-SECRET-never-stored-1234";

    let mut parent: Option<String> = None;
    let mut span_ids = Vec::new();
    for i in 0..3 {
        let mut req = client()
            .post(proxy.url("/v1/chat/completions"))
            .header("authorization", format!("Bearer {secret}"))
            .header("api-key", secret)
            .header("cookie", format!("session={secret}"))
            .header("x-tracer-trace-id", "prop-chain")
            .header("x-tracer-session-id", "sess-7")
            .header("x-tracer-user-id", "user-9")
            .header("x-tracer-tags", "prod, search")
            .header("x-tracer-meta-step", format!("{i}"))
            .header("x-tracer-span-name", format!("step {i}"))
            .json(&chat_body("gpt-4o-mini", &format!("step {i}"), i == 1));
        if let Some(p) = &parent {
            req = req.header("x-tracer-parent-span-id", p);
        }
        let rsp = req.send().await.unwrap();
        assert_eq!(rsp.status(), 200);
        let id = rsp.headers()["x-tracer-span-id"]
            .to_str()
            .unwrap()
            .to_string();
        rsp.bytes().await.unwrap();
        parent = Some(id.clone());
        span_ids.push(id);
    }

    let trace = proxy.wait_for_trace("prop-chain", 3).await;
    let spans = trace["spans"].as_array().unwrap();
    assert_eq!(
        spans.len(),
        3,
        "three calls with one trace id form one trace"
    );
    for (i, span) in spans.iter().enumerate() {
        assert_eq!(
            span["span_id"],
            span_ids[i].as_str(),
            "spans are ordered by start time"
        );
        assert_eq!(span["name"], format!("step {i}"));
        assert_eq!(span["session_id"], "sess-7");
        assert_eq!(span["user_id"], "user-9");
        assert_eq!(span["tags"], serde_json::json!(["prod", "search"]));
        assert_eq!(span["metadata"]["step"], format!("{i}"));
        let expected_parent = if i == 0 {
            serde_json::Value::Null
        } else {
            span_ids[i - 1].as_str().into()
        };
        assert_eq!(
            span["parent_span_id"], expected_parent,
            "span {i} points at the previous call"
        );
    }
    assert_eq!(trace["trace"]["span_count"], 3);
    assert_eq!(
        trace["trace"]["name"], "step 0",
        "the root span names the trace"
    );
    assert_eq!(trace["trace"]["session_id"], "sess-7");

    for req in upstream.requests() {
        assert!(
            req.headers
                .keys()
                .all(|k| !k.as_str().starts_with("x-tracer-")),
            "the upstream never sees x-tracer-*"
        );
    }

    proxy.stop().await; // flushes the store
    let stored = all_bytes_under(&proxy.dir);
    assert!(!stored.is_empty());
    assert!(
        !contains(&stored, secret.as_bytes()),
        "credentials are nowhere in the store"
    );
}

#[tokio::test]
async fn traceparent_groups_calls_and_is_rewritten_for_the_upstream() {
    let upstream = MockUpstream::start().await.unwrap();
    let proxy = TestProxy::start(&upstream.url()).await;
    let w3c_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parents = ["00f067aa0ba902b7", "00f067aa0ba902b8", "00f067aa0ba902b9"];

    let mut span_ids = Vec::new();
    for parent in parents {
        let rsp = client()
            .post(proxy.url("/v1/chat/completions"))
            .header("traceparent", format!("00-{w3c_trace}-{parent}-01"))
            .json(&chat_body("gpt-4o-mini", "hi", false))
            .send()
            .await
            .unwrap();
        assert_eq!(
            rsp.headers()["x-tracer-trace-id"],
            w3c_trace,
            "the traceparent's trace id is the trace"
        );
        span_ids.push(
            rsp.headers()["x-tracer-span-id"]
                .to_str()
                .unwrap()
                .to_string(),
        );
        rsp.bytes().await.unwrap();
    }

    let trace = proxy.wait_for_trace(w3c_trace, 3).await;
    for span in trace["spans"].as_array().unwrap() {
        let i = span_ids
            .iter()
            .position(|id| span["span_id"] == id.as_str())
            .unwrap();
        assert_eq!(
            span["parent_span_id"], parents[i],
            "the traceparent's parent-id is the parent span"
        );
    }
    for (i, req) in upstream.requests().iter().enumerate() {
        assert_eq!(
            req.headers["traceparent"].to_str().unwrap(),
            format!("00-{w3c_trace}-{}-01", span_ids[i]),
            "the upstream sees the proxy span as its parent"
        );
    }
}

#[tokio::test]
async fn invalid_trace_headers_are_ignored_and_a_fresh_trace_is_minted() {
    let upstream = MockUpstream::start().await.unwrap();
    let proxy = TestProxy::start(&upstream.url()).await;
    let rsp = client()
        .post(proxy.url("/v1/chat/completions"))
        .header("x-tracer-trace-id", "not a valid id!")
        .header("traceparent", "00-zzzz-00f067aa0ba902b7-01")
        .json(&chat_body("gpt-4o-mini", "hi", false))
        .send()
        .await
        .unwrap();
    assert_eq!(
        rsp.status(),
        200,
        "bad tracing headers never break the app's call"
    );
    let trace_id = rsp.headers()["x-tracer-trace-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(trace_id.len(), 32, "a fresh trace id was minted");
    rsp.bytes().await.unwrap();
    let trace = proxy.wait_for_trace(&trace_id, 1).await;
    assert!(trace["spans"][0]["parent_span_id"].is_null());
}

#[tokio::test]
async fn traces_the_proxy_starts_have_ids_that_begin_with_the_time() {
    let upstream = MockUpstream::start().await.unwrap();
    let proxy = TestProxy::start(&upstream.url()).await;
    let now_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    };
    let mut ids = Vec::new();
    for _ in 0..3 {
        let before = now_ms();
        let rsp = client()
            .post(proxy.url("/v1/chat/completions"))
            .json(&chat_body("gpt-4o-mini", "hi", false))
            .send()
            .await
            .unwrap();
        let after = now_ms();
        let id = rsp.headers()["x-tracer-trace-id"]
            .to_str()
            .unwrap()
            .to_string();
        rsp.bytes().await.unwrap();
        let minted = u64::from_str_radix(&id[..12], 16).unwrap();
        assert!(
            (before..=after).contains(&minted),
            "{id}: its first 12 hex digits are the milliseconds it was minted at \
             ({before}..={after})"
        );
        ids.push(id);
        tokio::time::sleep(std::time::Duration::from_millis(3)).await;
    }
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(sorted, ids, "later traces sort after earlier ones");
    for id in &ids {
        let trace = proxy.wait_for_trace(id, 1).await;
        assert_eq!(trace["spans"][0]["trace_id"], id.as_str());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn span_ids_the_proxy_mints_are_unique_and_count_up_from_one_start() {
    let upstream = MockUpstream::start().await.unwrap();
    let proxy = TestProxy::start(&upstream.url()).await;
    // Four clients at once, five calls each, on a runtime of four workers: more than one
    // thread may mint ids, each from its own block.
    let calls = (0..4).map(|_| {
        let url = proxy.url("/v1/chat/completions");
        tokio::spawn(async move {
            let mut ids = Vec::new();
            for _ in 0..5 {
                let rsp = client()
                    .post(&url)
                    .json(&chat_body("gpt-4o-mini", "hi", false))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(rsp.status(), 200);
                let header = |name: &str| rsp.headers()[name].to_str().unwrap().to_string();
                let ids_of_call = (header("x-tracer-trace-id"), header("x-tracer-span-id"));
                rsp.bytes().await.unwrap();
                ids.push(ids_of_call);
            }
            ids
        })
    });
    let mut minted = Vec::new();
    for call in calls {
        minted.extend(call.await.unwrap());
    }
    let numbers: Vec<u64> = minted
        .iter()
        .map(|(_, span)| {
            assert!(
                span.len() == 16
                    && span
                        .bytes()
                        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
                "a span id is 16 lowercase hex digits: {span}"
            );
            u64::from_str_radix(span, 16).unwrap()
        })
        .collect();
    let distinct: std::collections::HashSet<u64> = numbers.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        numbers.len(),
        "span ids never repeat: {minted:?}"
    );
    assert!(!distinct.contains(&0), "never all zeros");
    // One sequence from one random start, each thread taking 256 at a time: the 20 ids sit
    // within a few blocks of each other (random ids would be ~2^63 apart).
    let (lo, hi) = (numbers.iter().min().unwrap(), numbers.iter().max().unwrap());
    assert!(
        hi.wrapping_sub(*lo) < 1 << 16,
        "span ids count up from one start: {lo:x}..{hi:x}"
    );
    for (trace_id, span_id) in &minted {
        let trace = proxy.wait_for_trace(trace_id, 1).await;
        assert_eq!(trace["spans"][0]["span_id"], span_id.as_str());
    }
}

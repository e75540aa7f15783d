//! `[[redact]]` rules through a running proxy: values matched by a JSON path or a regex are
//! replaced before anything is stored, in captured calls (streamed and not, input and
//! reassembled output) and in ingested app spans, and appear nowhere in the data dir's files.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{all_bytes_under, client, contains, MockUpstream, TestProxy};
use llm_tracer::config::{self, Flags};
use serde_json::json;

const EMAIL: &str = "alice.private@example.com";
const CARD: &str = "4111 1111 1111 1111";
const USER_FIELD: &str = "internal-user-7781";

#[tokio::test]
async fn redacted_values_are_nowhere_in_the_data_dir() {
    let upstream = MockUpstream::start().await.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let file = tmp.path().join("c.toml");
    std::fs::write(
        &file,
        r#"
redact_headers = ["x-internal-auth"]

[[redact]]
json_path = "$.user"

[[redact]]
regex = '[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}'
replacement = "[EMAIL]"

[[redact]]
regex = '\b(?:\d[ -]?){13,19}\b'
"#,
    )
    .unwrap();
    let flags = Flags {
        listen: Some("127.0.0.1:0".into()),
        admin_listen: Some("127.0.0.1:0".into()),
        data_dir: Some(data.display().to_string()),
        upstream: Some(upstream.url()),
        batch_interval_ms: Some("5".into()),
        ..Flags::default()
    };
    let cfg = config::load(Some(&file), &flags, &|_| None).unwrap();
    assert_eq!(cfg.redact_headers, ["x-internal-auth"]);
    let mut proxy = TestProxy::start_with(cfg).await;

    let prompt = format!("call tool: mail {EMAIL}, card {CARD}");
    for (i, stream) in [false, true].into_iter().enumerate() {
        let body = json!({
            "model": "gpt-4o-mini",
            "stream": stream,
            "user": USER_FIELD,
            "messages": [{ "role": "user", "content": prompt }],
            "tools": [{ "type": "function", "function": { "name": "lookup", "parameters": { "type": "object" } } }],
        });
        let rsp = client()
            .post(proxy.url("/v1/chat/completions"))
            .header("x-tracer-trace-id", format!("redact-{i}"))
            .header("x-internal-auth", "hdr-secret-991")
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(rsp.status(), 200);
        let text = rsp.text().await.unwrap();
        // A stream splits the echoed arguments across events; the reassembled output has them.
        assert!(
            stream || text.contains("alice.private"),
            "the app still gets the upstream's bytes unredacted (the mock echoes the prompt): {text}"
        );
        let trace = proxy.wait_for_trace(&format!("redact-{i}"), 1).await;
        let span = &trace["spans"][0];
        assert_eq!(
            span["input"]["user"], "[REDACTED]",
            "a json_path match is replaced"
        );
        let content = span["input"]["messages"][0]["content"].as_str().unwrap();
        assert!(
            content.contains("[EMAIL]") && content.contains("[REDACTED]"),
            "regex matches inside strings are replaced: {content}"
        );
        let out = span["output"].to_string();
        assert!(
            !out.contains("alice.private") && !out.contains("4111"),
            "the (reassembled) output is redacted too: {out}"
        );
    }

    let ingest = json!([{ "trace_id": "redact-app", "span_id": "app1", "name": "chain", "kind": "chain",
        "start_time": "2026-11-27T10:00:00Z", "end_time": "2026-11-27T10:00:01Z",
        "input": { "question": format!("write to {EMAIL}") }, "output": format!("paid with {CARD}") }]);
    let rsp = client()
        .post(proxy.api("/api/spans"))
        .json(&ingest)
        .send()
        .await
        .unwrap();
    assert!(rsp.status().is_success());
    let (_, trace) = proxy.get_json("/api/traces/redact-app").await;
    assert_eq!(
        trace["spans"][0]["input"]["question"], "write to [EMAIL]",
        "ingested app spans get the same rules"
    );

    proxy.stop().await;
    let bytes = all_bytes_under(&data);
    for secret in [
        EMAIL,
        "alice.private",
        CARD,
        "4111111111111111",
        USER_FIELD,
        "hdr-secret-991",
    ] {
        assert!(
            !contains(&bytes, secret.as_bytes()),
            "{secret:?} is nowhere in the data dir's files"
        );
    }
}

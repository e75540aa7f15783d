//! Scale-out: two llm-tracer instances (separate data dirs) export to one collector; one trace
//! whose calls pass through both instances arrives whole, with correct ids and GenAI attributes,
//! each span under its instance's `service.name`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "support/otlp_receiver.rs"]
mod otlp_receiver;

use std::time::Duration;

use common::{chat_body, client, test_config, MockUpstream, TestProxy};
use llm_tracer::otlp::{self, OtlpConfig, Protocol};
use otlp_receiver::{attr_int, attr_str, OtlpReceiver};

async fn instance(
    upstream: &MockUpstream,
    collector: &str,
    name: &str,
) -> (TestProxy, tempfile::TempDir) {
    let tmp = tempfile::tempdir().unwrap();
    let mut config = test_config(tmp.path(), &upstream.url());
    config.otlp = Some(OtlpConfig {
        traces_url: otlp::traces_url(collector).unwrap(),
        protocol: Protocol::Protobuf,
        headers: vec![],
        batch_size: 16,
        interval: Duration::from_millis(20),
        max_buffer_spans: 1000,
        timeout: Duration::from_secs(2),
        service_name: name.into(),
    });
    (TestProxy::start_with(config).await, tmp)
}

#[tokio::test]
async fn two_instances_export_one_trace_to_one_collector() {
    let upstream = MockUpstream::start().await.unwrap();
    let collector = OtlpReceiver::start().await;
    let (a, _ta) = instance(&upstream, &collector.endpoint(), "tracer-a").await;
    let (b, _tb) = instance(&upstream, &collector.endpoint(), "tracer-b").await;
    assert_ne!(a.dir, b.dir, "each instance has its own data dir");
    let trace = "7bf92f3577b34da6a3ce929d0e0e4736";
    let root = "30f067aa0ba902b7";

    // Service 1 calls the model through instance A; service 2, called by service 1 (it received
    // A's span as its parent), calls the model through instance B; then A again.
    let mut parent = root.to_string();
    let mut calls = Vec::new();
    for (proxy, model) in [(&a, "gpt-4o-mini"), (&b, "gpt-4o"), (&a, "gpt-4o-mini")] {
        let rsp = client()
            .post(proxy.url("/v1/chat/completions"))
            .header("traceparent", format!("00-{trace}-{parent}-01"))
            .json(&chat_body(model, "hi", false))
            .send()
            .await
            .unwrap();
        assert_eq!(rsp.status(), 200);
        let id = rsp.headers()["x-tracer-span-id"]
            .to_str()
            .unwrap()
            .to_string();
        rsp.bytes().await.unwrap();
        calls.push((id.clone(), parent.clone(), model));
        parent = id;
    }
    // Each local store holds only its own part of the trace.
    assert_eq!(
        a.wait_for_trace(trace, 2).await["spans"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        b.wait_for_trace(trace, 1).await["spans"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    let got = collector.wait_for(3).await;
    assert_eq!(got.len(), 3, "the collector has the whole trace");
    for (i, (id, parent, model)) in calls.iter().enumerate() {
        let r = got
            .iter()
            .find(|r| hex::encode(&r.span.span_id) == *id)
            .unwrap_or_else(|| panic!("call {i} reached the collector"));
        assert_eq!(
            hex::encode(&r.span.trace_id),
            trace,
            "one trace id across instances"
        );
        assert_eq!(
            hex::encode(&r.span.parent_span_id),
            *parent,
            "parent links cross instances"
        );
        let instance = if i == 1 { "tracer-b" } else { "tracer-a" };
        assert_eq!(
            r.service, instance,
            "each span says which instance recorded it"
        );
        assert_eq!(
            attr_str(&r.span, "gen_ai.operation.name").as_deref(),
            Some("chat")
        );
        assert_eq!(
            attr_str(&r.span, "gen_ai.request.model").as_deref(),
            Some(*model)
        );
        assert!(attr_str(&r.span, "gen_ai.response.model").is_some());
        assert!(attr_int(&r.span, "gen_ai.usage.input_tokens").unwrap() > 0);
        assert!(attr_int(&r.span, "gen_ai.usage.output_tokens").unwrap() > 0);
    }
}

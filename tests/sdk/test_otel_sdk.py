"""A real OpenTelemetry SDK app: it creates a chain span (and a tool span), calls the proxy with
the openai SDK inside the chain span, propagating `traceparent`, and exports its own spans with
the OTLP/HTTP protobuf exporter to the admin listener's /v1/traces. The stored trace holds the
app's spans and the proxy's LLM span nested under the chain span."""
import openai
from opentelemetry import propagate
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from helpers import get_trace


def test_app_spans_and_the_proxy_llm_span_form_one_nested_trace(tracer):
    provider = TracerProvider(resource=Resource.create({"service.name": "otel-sdk-app"}))
    exporter = OTLPSpanExporter(endpoint=tracer["admin"] + "/v1/traces", timeout=10)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    tr = provider.get_tracer("tests.sdk.otel")

    client = openai.OpenAI(
        base_url=tracer["proxy"] + "/v1",
        api_key="sk-sdk-test-key-never-stored",
        max_retries=0,
    )
    with tr.start_as_current_span(
        "answer question", attributes={"openinference.span.kind": "CHAIN"}
    ) as chain:
        with tr.start_as_current_span(
            "search docs",
            attributes={"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "search"},
        ):
            pass
        headers = {}
        propagate.inject(headers)
        assert "traceparent" in headers, "the SDK propagates W3C trace context"
        reply = client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "What is OpenTelemetry?"}],
            extra_headers=headers,
        )
        assert reply.choices[0].message.content
    assert provider.force_flush(10_000), "the SDK exported its spans"
    provider.shutdown()

    ctx = chain.get_span_context()
    trace_id = format(ctx.trace_id, "032x")
    chain_id = format(ctx.span_id, "016x")
    trace = get_trace(tracer["admin"], trace_id, 3)
    spans = {s["name"]: s for s in trace["spans"]}
    assert set(spans) >= {"answer question", "search docs"}, f"the app's spans are stored: {list(spans)}"

    chain_span = spans["answer question"]
    assert chain_span["span_id"] == chain_id
    assert chain_span["kind"] == "chain"
    assert chain_span["parent_span_id"] is None
    assert chain_span["metadata"]["service.name"] == "otel-sdk-app"

    tool = spans["search docs"]
    assert tool["kind"] == "tool"
    assert tool["parent_span_id"] == chain_id

    llm = [s for s in trace["spans"] if s["kind"] == "llm"]
    assert len(llm) == 1, "one call through the proxy"
    assert llm[0]["parent_span_id"] == chain_id, "the proxy's LLM span nests under the chain span"
    assert llm[0]["llm"]["request_model"] == "gpt-4o-mini"
    assert llm[0]["llm"]["output_tokens"] > 0
    assert trace["trace"]["span_count"] == 3

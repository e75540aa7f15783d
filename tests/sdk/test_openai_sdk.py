"""The official OpenAI Python SDK pointed at the proxy works unchanged, and its calls are traced."""
import json
import time
import urllib.request

import openai


def get_trace(admin, trace_id, spans, deadline_s=20):
    """Polls the admin API until the trace has `spans` spans (a hang guard, not a timing check)."""
    end = time.time() + deadline_s
    while True:
        try:
            with urllib.request.urlopen(f"{admin}/api/traces/{trace_id}") as r:
                body = json.load(r)
                if len(body["spans"]) >= spans:
                    return body
        except urllib.error.HTTPError as e:
            if e.code != 404:
                raise
        assert time.time() < end, f"trace {trace_id} never reached {spans} spans"
        time.sleep(0.05)


def test_streamed_and_non_streamed_calls_are_traced(tracer):
    client = openai.OpenAI(
        base_url=tracer["proxy"] + "/v1",
        api_key="sk-sdk-test-key-never-stored",
        default_headers={"x-tracer-trace-id": "sdk-openai-1", "x-tracer-session-id": "sdk-session"},
    )
    reply = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Say hello"}],
        temperature=0.1,
    )
    text = reply.choices[0].message.content
    assert text, "the SDK parsed a normal completion through the proxy"

    stream = client.chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": "Stream a story"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    streamed = "".join(
        chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices
    )
    assert streamed, "the SDK consumed the stream through the proxy"

    trace = get_trace(tracer["admin"], "sdk-openai-1", 2)
    first, second = trace["spans"]
    assert first["llm"]["request_model"] == "gpt-4o-mini"
    assert first["llm"]["input_tokens"] > 0 and first["llm"]["output_tokens"] > 0
    assert first["output"]["choices"][0]["message"]["content"] == text
    assert first["llm"]["params"]["temperature"] == 0.1
    assert second["llm"]["stream"] is True
    assert second["llm"]["request_model"] == "gpt-4o"
    assert second["output"]["choices"][0]["message"]["content"] == streamed, "the stream is reassembled"
    assert second["llm"]["ttft_ms"] is not None and second["llm"]["ttft_ms"] >= 0
    assert second["llm"]["output_tokens"] > 0, "usage from the final usage chunk"
    assert trace["trace"]["session_id"] == "sdk-session"
    assert "sk-sdk-test-key-never-stored" not in json.dumps(trace), "credentials are never stored"


def test_upstream_errors_raise_the_sdk_typed_error(tracer):
    client = openai.OpenAI(
        base_url=tracer["proxy"] + "/v1",
        api_key="sk-test",
        max_retries=0,
        default_headers={"x-tracer-trace-id": "sdk-openai-err"},
    )
    try:
        client.chat.completions.create(model="mock-error", messages=[{"role": "user", "content": "x"}])
        raise AssertionError("expected an error")
    except openai.InternalServerError as e:
        assert e.status_code == 500
    trace = get_trace(tracer["admin"], "sdk-openai-err", 1)
    assert trace["spans"][0]["status"] == "error"
    assert trace["spans"][0]["error"]["message"]

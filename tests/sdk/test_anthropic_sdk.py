"""The official Anthropic Python SDK, pointed at the proxy's /anthropic route (prefix stripped, to
the mock's Messages API), works unchanged, and its calls become `messages` spans."""
import anthropic

from helpers import assert_priced, assert_reported, get_trace, only_span


def client_for(tracer, trace_id):
    return anthropic.Anthropic(
        base_url=tracer["proxy"] + "/anthropic",
        api_key="sk-ant-sdk-test-key-never-stored",
        max_retries=0,
        default_headers={"x-tracer-trace-id": trace_id},
    )


def test_messages_non_streamed(tracer):
    client = client_for(tracer, "sdk-anthropic-plain")
    message = client.messages.create(
        model="claude-sonnet-5",
        max_tokens=128,
        system="Be brief.",
        messages=[{"role": "user", "content": "hello claude"}],
        stop_sequences=["END"],
    )
    assert message.content[0].text == "Mock reply to: hello claude"

    span = only_span(tracer["admin"], "sdk-anthropic-plain")
    assert span["kind"] == "llm"
    assert span["name"] == "messages claude-sonnet-5"
    assert span["llm"]["provider"] == "anthropic"
    assert span["llm"]["operation"] == "messages"
    assert span["llm"]["request_model"] == "claude-sonnet-5"
    assert span["llm"]["params"]["max_tokens"] == 128
    assert span["llm"]["params"]["stop_sequences"] == ["END"]
    assert span["output"]["content"][0]["text"] == message.content[0].text
    assert span["llm"]["finish_reason"] == "end_turn"
    assert_reported(span, input_tokens=message.usage.input_tokens, output_tokens=message.usage.output_tokens)
    assert_priced(span)
    assert span["http"]["path"] == "/anthropic/v1/messages"


def test_messages_streamed_with_the_stream_helper(tracer):
    client = client_for(tracer, "sdk-anthropic-stream")
    with client.messages.stream(
        model="claude-haiku-4-5",
        max_tokens=128,
        messages=[{"role": "user", "content": "stream to me please"}],
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "Mock reply to: stream to me please"

    span = only_span(tracer["admin"], "sdk-anthropic-stream")
    assert span["llm"]["stream"] is True
    assert span["llm"]["operation"] == "messages"
    assert span["status"] == "ok"
    assert span["output"]["type"] == "message"
    assert span["output"]["content"][0]["text"] == text
    assert span["llm"]["ttft_ms"] is not None
    # message_delta's cumulative count replaced message_start's, as the SDK's own did.
    assert_reported(span, input_tokens=final.usage.input_tokens, output_tokens=final.usage.output_tokens)
    assert_priced(span)


def test_streamed_tool_use_is_reassembled(tracer):
    client = client_for(tracer, "sdk-anthropic-tool")
    tools = [{"name": "get_weather", "description": "Weather", "input_schema": {"type": "object"}}]
    events = list(
        client.messages.create(
            model="claude-sonnet-5",
            max_tokens=128,
            tools=tools,
            messages=[{"role": "user", "content": "call tool: weather in Oslo"}],
            stream=True,
        )
    )
    partial = "".join(
        e.delta.partial_json for e in events
        if e.type == "content_block_delta" and e.delta.type == "input_json_delta"
    )

    span = only_span(tracer["admin"], "sdk-anthropic-tool")
    [block] = span["output"]["content"]
    assert block["type"] == "tool_use" and block["name"] == "get_weather"
    assert block["input"] == {"input": "call tool: weather in Oslo"}, partial
    assert span["llm"]["finish_reason"] == "tool_use"
    assert_reported(span)


def test_a_mid_stream_error_raises_and_is_an_error_span(tracer):
    client = anthropic.Anthropic(
        base_url=tracer["proxy"] + "/anthropic",
        api_key="sk-ant-test",
        max_retries=0,
        default_headers={"x-tracer-trace-id": "sdk-anthropic-error", "x-mock-stream-error": "1"},
    )
    try:
        with client.messages.stream(
            model="claude-sonnet-5", max_tokens=16, messages=[{"role": "user", "content": "boom"}]
        ) as stream:
            for _ in stream.text_stream:
                pass
        raise AssertionError("the SDK raises on an error event")
    except anthropic.APIStatusError:
        pass
    trace = get_trace(tracer["admin"], "sdk-anthropic-error", 1)
    span = trace["spans"][0]
    assert span["status"] == "error"
    assert span["error"]["type"] == "overloaded_error"
    assert span["output"]["content"][0]["text"] == "Mock reply to: boom", "partial text kept"


def test_an_upstream_silent_mid_stream_raises_in_the_sdk(tracer):
    client = anthropic.Anthropic(
        base_url=tracer["proxy"] + "/anthropic",
        api_key="sk-ant-test",
        max_retries=0,
        default_headers={"x-tracer-trace-id": "sdk-anthropic-idle", "x-mock-hold": "1"},
    )
    try:
        with client.messages.stream(
            model="claude-sonnet-5", max_tokens=16, messages=[{"role": "user", "content": "hush"}]
        ) as stream:
            for _ in stream.text_stream:
                pass
        raise AssertionError("the SDK raises on the proxy's error event")
    except anthropic.APIStatusError as e:
        assert "idle_stream_timeout_ms" in str(e), str(e)
    trace = get_trace(tracer["admin"], "sdk-anthropic-idle", 1)
    span = trace["spans"][0]
    assert span["status"] == "error"
    assert span["error"]["type"] == "upstream_idle_timeout"

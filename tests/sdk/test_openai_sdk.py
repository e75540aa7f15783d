"""The official OpenAI Python SDK pointed at the proxy works unchanged, and its calls are traced:
chat (sync and async, streamed and not, tool calls streamed), embeddings (the SDK's default
base64 and floats), and the Responses API (streamed and not, tool calls)."""
import asyncio
import json

import openai

from helpers import assert_estimated, assert_priced, assert_reported, get_trace, only_span

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"input": {"type": "string"}}},
    },
}


def client_for(tracer, trace_id, cls=openai.OpenAI, **headers):
    return cls(
        base_url=tracer["proxy"] + "/v1",
        api_key="sk-sdk-test-key-never-stored",
        max_retries=0,
        default_headers={"x-tracer-trace-id": trace_id, **headers},
    )


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


def test_streamed_tool_calls_are_accumulated(tracer):
    client = client_for(tracer, "sdk-openai-tools")
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "call tool weather in Paris"}],
        tools=[WEATHER_TOOL],
        stream=True,
        stream_options={"include_usage": True},
    )
    calls = {}
    for chunk in stream:
        for choice in chunk.choices:
            for call in choice.delta.tool_calls or []:
                entry = calls.setdefault(call.index, {"id": None, "name": None, "arguments": ""})
                entry["id"] = entry["id"] or call.id
                if call.function and call.function.name:
                    entry["name"] = call.function.name
                if call.function and call.function.arguments:
                    entry["arguments"] += call.function.arguments
    assert calls[0]["name"] == "get_weather", "the SDK saw the streamed tool call"

    span = only_span(tracer["admin"], "sdk-openai-tools")
    assert span["llm"]["operation"] == "chat"
    assert span["llm"]["request_model"] == "gpt-4o-mini"
    [tool_call] = span["output"]["choices"][0]["message"]["tool_calls"]
    assert tool_call["id"] == calls[0]["id"]
    assert tool_call["function"]["name"] == "get_weather"
    assert tool_call["function"]["arguments"] == calls[0]["arguments"], "arguments concatenated"
    assert json.loads(tool_call["function"]["arguments"]) == {"input": "call tool weather in Paris"}
    assert span["llm"]["finish_reason"] == "tool_calls"
    assert_reported(span)
    assert_priced(span)


def test_a_stream_without_usage_is_estimated(tracer):
    client = client_for(tracer, "sdk-openai-estimated")
    text = "".join(
        chunk.choices[0].delta.content or ""
        for chunk in client.chat.completions.create(
            model="gpt-4o",
            messages=[{"role": "user", "content": "no usage please"}],
            stream=True,
        )
        if chunk.choices
    )
    span = only_span(tracer["admin"], "sdk-openai-estimated")
    assert span["output"]["choices"][0]["message"]["content"] == text
    assert_estimated(span)
    assert_priced(span)


def test_async_client_chat_stream_and_not(tracer):
    async def run():
        client = client_for(tracer, "sdk-openai-async", cls=openai.AsyncOpenAI)
        reply = await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "async hello"}]
        )
        stream = await client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "async stream"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        streamed = ""
        async for chunk in stream:
            if chunk.choices:
                streamed += chunk.choices[0].delta.content or ""
        await client.close()
        return reply.choices[0].message.content, streamed

    text, streamed = asyncio.run(run())
    assert text == "Mock reply to: async hello"
    assert streamed == "Mock reply to: async stream"
    trace = get_trace(tracer["admin"], "sdk-openai-async", 2)
    by_stream = {s["llm"]["stream"]: s for s in trace["spans"]}
    assert by_stream[False]["output"]["choices"][0]["message"]["content"] == text
    assert by_stream[True]["output"]["choices"][0]["message"]["content"] == streamed
    for span in trace["spans"]:
        assert span["llm"]["operation"] == "chat"
        assert_reported(span)
        assert_priced(span)


def test_embeddings_in_base64_and_float(tracer):
    client = client_for(tracer, "sdk-openai-embeddings")
    # The SDK asks for base64 by default and decodes it itself.
    result = client.embeddings.create(model="text-embedding-3-small", input=["alpha beta", "gamma"])
    assert len(result.data) == 2 and len(result.data[0].embedding) == 1536
    floats = client.embeddings.create(
        model="text-embedding-3-small", input="delta", encoding_format="float", dimensions=8
    )
    assert len(floats.data[0].embedding) == 8

    trace = get_trace(tracer["admin"], "sdk-openai-embeddings", 2)
    first, second = trace["spans"]
    for span in trace["spans"]:
        assert span["kind"] == "embedding"
        assert span["llm"]["operation"] == "embeddings"
        assert span["llm"]["request_model"] == "text-embedding-3-small"
        assert_priced(span)
    assert first["output"]["inputs"] == 2
    assert first["output"]["dimensions"] == 1536, "the dimensions are measured from base64"
    assert first["output"]["encoding_format"] == "base64"
    assert first["llm"]["input_tokens"] == 3
    assert second["output"]["dimensions"] == 8
    assert "embedding" not in first["output"]["data"][0], "vectors are not stored by default"


def test_responses_api_stream_and_not(tracer):
    client = client_for(tracer, "sdk-openai-responses")
    response = client.responses.create(
        model="gpt-4.1", instructions="Be brief.", input="What is a span?", temperature=0.2
    )
    assert response.output_text == "Mock reply to: What is a span?"

    events = list(client.responses.create(model="gpt-4.1", input="Stream it", stream=True))
    assert events[-1].type == "response.completed", "the stream ends with its terminal event"
    streamed = "".join(e.delta for e in events if e.type == "response.output_text.delta")

    with client.responses.stream(model="gpt-4.1-mini", input="Use the helper") as stream:
        final = stream.get_final_response()
    assert final.output_text == "Mock reply to: Use the helper"

    trace = get_trace(tracer["admin"], "sdk-openai-responses", 3)
    plain, streaming, helper = trace["spans"]
    for span in trace["spans"]:
        assert span["kind"] == "llm"
        assert span["llm"]["operation"] == "responses"
        assert span["status"] == "ok"
        assert_reported(span)
        assert_priced(span)
    assert plain["llm"]["request_model"] == "gpt-4.1"
    assert plain["llm"]["params"]["temperature"] == 0.2
    assert plain["output"]["output"][0]["content"][0]["text"] == response.output_text
    assert_reported(plain, input_tokens=6, output_tokens=7)
    assert streaming["llm"]["stream"] is True
    assert streaming["output"]["output"][0]["content"][0]["text"] == streamed
    assert streaming["llm"]["ttft_ms"] is not None
    assert helper["llm"]["request_model"] == "gpt-4.1-mini"
    assert helper["output"]["output"][0]["content"][0]["text"] == final.output_text


def test_responses_api_function_calls(tracer):
    client = client_for(tracer, "sdk-openai-responses-tool")
    tool = {"type": "function", "name": "lookup", "parameters": {"type": "object", "properties": {}}}
    events = list(
        client.responses.create(
            model="gpt-4.1", input="call tool: find it", tools=[tool], stream=True
        )
    )
    arguments = "".join(
        e.delta for e in events if e.type == "response.function_call_arguments.delta"
    )
    span = only_span(tracer["admin"], "sdk-openai-responses-tool")
    [item] = span["output"]["output"]
    assert item["type"] == "function_call" and item["name"] == "lookup"
    assert item["arguments"] == arguments == '{"input":"call tool: find it"}'


def test_an_upstream_silent_mid_stream_raises_an_api_error_in_the_sdk(tracer):
    """The proxy ends a stream whose upstream went silent (idle_stream_timeout_ms) with an error
    event the SDK raises, instead of a stream that just stops or hangs."""
    client = client_for(tracer, "sdk-openai-idle", **{"x-mock-hold": "1"})
    stream = client.chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": "then silence"}],
        stream=True,
    )
    seen = []
    try:
        for chunk in stream:
            if chunk.choices:
                seen.append(chunk.choices[0].delta.content or "")
        raise AssertionError("the SDK raises on the proxy's error event")
    except openai.APIError as e:
        assert "idle_stream_timeout_ms" in e.message, e.message
    assert "".join(seen).startswith("Mock reply to"), "the content before the silence arrived"
    span = only_span(tracer["admin"], "sdk-openai-idle")
    assert span["status"] == "error"
    assert span["error"]["type"] == "upstream_idle_timeout"

"""LangChain's ChatOpenAI pointed at the proxy: invoke and stream, with x-tracer-* headers set
through default_headers. (Never call get_num_tokens here: it makes tiktoken download files.)"""
from langchain_core.messages import HumanMessage, SystemMessage
from langchain_openai import ChatOpenAI

from helpers import assert_estimated, assert_priced, assert_reported, get_trace


def chat_model(tracer, trace_id, **kwargs):
    return ChatOpenAI(
        model="gpt-4o-mini",
        base_url=tracer["proxy"] + "/v1",
        api_key="sk-langchain-test-key-never-stored",
        temperature=0.2,
        max_retries=0,
        default_headers={
            "x-tracer-trace-id": trace_id,
            "x-tracer-session-id": "lc-session",
            "x-tracer-user-id": "lc-user",
            "x-tracer-tags": "langchain,sdk",
            "x-tracer-meta-framework": "langchain",
        },
        **kwargs,
    )


def test_invoke_and_stream_are_traced_with_headers(tracer):
    llm = chat_model(tracer, "sdk-langchain")
    reply = llm.invoke([SystemMessage("Be brief."), HumanMessage("hello langchain")])
    assert reply.content == "Mock reply to: hello langchain"

    streamed = "".join(chunk.content for chunk in llm.stream("stream from langchain"))
    assert streamed == "Mock reply to: stream from langchain"

    trace = get_trace(tracer["admin"], "sdk-langchain", 2)
    assert trace["trace"]["session_id"] == "lc-session"
    invoked, streaming = trace["spans"]
    for span in trace["spans"]:
        assert span["user_id"] == "lc-user"
        assert span["tags"] == ["langchain", "sdk"]
        assert span["metadata"]["framework"] == "langchain"
        assert span["llm"]["operation"] == "chat"
        assert span["llm"]["request_model"] == "gpt-4o-mini"
        assert span["llm"]["params"]["temperature"] == 0.2
        assert_priced(span)
    assert invoked["output"]["choices"][0]["message"]["content"] == reply.content
    assert_reported(invoked)
    assert streaming["llm"]["stream"] is True
    assert streaming["output"]["choices"][0]["message"]["content"] == streamed
    # ChatOpenAI does not ask for stream usage on a custom base_url: the proxy counts.
    assert_estimated(streaming)


def test_tool_calls_through_langchain(tracer):
    llm = chat_model(tracer, "sdk-langchain-tools").bind_tools(
        [{"type": "function", "function": {"name": "get_weather", "description": "Weather",
                                           "parameters": {"type": "object", "properties": {"input": {"type": "string"}}}}}]
    )
    message = llm.invoke("call tool: weather in Rome")
    assert message.tool_calls[0]["name"] == "get_weather"
    assert message.tool_calls[0]["args"] == {"input": "call tool: weather in Rome"}
    trace = get_trace(tracer["admin"], "sdk-langchain-tools", 1)
    [call] = trace["spans"][0]["output"]["choices"][0]["message"]["tool_calls"]
    assert call["function"]["name"] == "get_weather"


def test_langchain_on_the_responses_api(tracer):
    llm = chat_model(tracer, "sdk-langchain-responses", use_responses_api=True)
    reply = llm.invoke("hello responses")
    assert "Mock reply to: hello responses" in reply.text
    trace = get_trace(tracer["admin"], "sdk-langchain-responses", 1)
    span = trace["spans"][0]
    assert span["llm"]["operation"] == "responses"
    assert span["output"]["output"][0]["content"][0]["text"] == "Mock reply to: hello responses"
    assert_reported(span)

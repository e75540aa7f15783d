"""Shared helpers for the SDK tests: polling the admin API for a trace's spans."""
import json
import time
import urllib.error
import urllib.request


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


def only_span(admin, trace_id):
    """The single span of a one-call trace."""
    trace = get_trace(admin, trace_id, 1)
    assert len(trace["spans"]) == 1, f"trace {trace_id} holds exactly one call"
    return trace["spans"][0]


def assert_reported(span, input_tokens=None, output_tokens=None):
    """The upstream reported the usage, and the span carries it."""
    llm = span["llm"]
    assert llm["usage_source"] == "reported", f"usage is reported: {llm}"
    assert llm["input_tokens"] > 0 and llm["output_tokens"] is not None
    if input_tokens is not None:
        assert llm["input_tokens"] == input_tokens, f"input tokens: {llm}"
    if output_tokens is not None:
        assert llm["output_tokens"] == output_tokens, f"output tokens: {llm}"
    assert llm["total_tokens"] == llm["input_tokens"] + llm["output_tokens"]


def assert_estimated(span):
    """The upstream reported no usage, so the proxy counted the tokens and says so."""
    llm = span["llm"]
    assert llm["usage_source"] == "estimated", f"usage is estimated: {llm}"
    assert llm["input_tokens"] > 0 and llm["output_tokens"] > 0, f"estimated tokens: {llm}"


def assert_priced(span):
    """The model is in the price list, so the call has a positive cost."""
    cost = span["llm"]["cost_usd"]
    assert cost is not None and cost > 0, f"a priced model has a cost: {span['llm']}"

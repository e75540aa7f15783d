//! OpenAI's Responses API (`…/responses`): operation `responses`.
//!
//! `output` is always a `response` object. Non-streamed, it is the body. Streamed (typed
//! `event:` blocks, no `[DONE]`), it is the `response` of the terminal event
//! (`response.completed`, `response.incomplete` or `response.failed`); its `output` items are
//! rebuilt from `response.output_item.added/done`, `response.output_text.delta`,
//! `response.refusal.delta`, `response.function_call_arguments.delta/done` and reasoning-summary
//! deltas when the terminal event lacks them or never came (a cut stream).
//!
//! Usage arrives only with the terminal response: `input_tokens` (cached ones in
//! `input_tokens_details.cached_tokens`) and `output_tokens` (reasoning in
//! `output_tokens_details.reasoning_tokens`). A `failed` or `incomplete` response, or an `error`
//! event, makes an error span. `finish_reason` is the response's `status`, or for an incomplete
//! one the reason (`max_output_tokens`, `content_filter`).

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use super::assemble::{Exchange, Form, Outcome};
use super::estimate::{Estimate, Text};
use super::openai::{
    default_name, event_object, non_empty, push_content, read_request, token_count, Unparsed,
};
use super::{sse, Kind, LlmInfo, SpanError};

const NOT_PARAMS: &[&str] = &["model", "input", "instructions", "stream"];

pub(super) fn responses(x: &Exchange<'_>) -> Outcome {
    let mut llm = LlmInfo {
        provider: Some(x.provider("openai")),
        operation: Some("responses".to_string()),
        ..LlmInfo::default()
    };
    read_request(&x.request.value, NOT_PARAMS, &mut llm);
    llm.request_model = x.request_model();
    let mut outcome = Outcome::new(Kind::Llm, default_name("responses", &llm));
    match x.form(llm.stream) {
        Form::Sse => {
            let events = sse::parse(&x.response.bytes);
            let stream = reassemble(&events);
            llm.stream = true;
            outcome.streamed = true;
            outcome.finished = stream.terminal;
            outcome.first_token_end = stream.first_token_end;
            if let Some(note) = stream.skipped.note() {
                outcome.notes.push(note);
            }
            match stream.response {
                Some(response) => {
                    read_response(&response, &mut llm);
                    outcome.body_error = stream.error.or_else(|| response_error(&response));
                    outcome.output = response;
                }
                None => {
                    outcome.body_error = stream.error;
                    outcome.output = x.response.value.clone();
                }
            }
        }
        Form::Json => {
            let body = &x.response.value;
            read_response(body, &mut llm);
            outcome.body_error = response_error(body);
            outcome.output = body.clone();
            outcome.finished = !x.response.truncated;
        }
        Form::Failed | Form::Other => outcome.output = x.response.value.clone(),
    }
    if llm.usage_source.is_none() {
        outcome.estimate = Some(Estimate {
            input: input_text(&x.request.value),
            output: output_text(&outcome.output),
        });
    }
    outcome.llm = Some(llm);
    outcome
}

/// Model, usage and status of a `response` object.
fn read_response(response: &Value, llm: &mut LlmInfo) {
    llm.response_model = non_empty(response.get("model"));
    llm.finish_reason = match response.get("status").and_then(Value::as_str) {
        Some("incomplete") => response
            .pointer("/incomplete_details/reason")
            .and_then(Value::as_str)
            .or(Some("incomplete"))
            .map(str::to_owned),
        other => other.filter(|s| !s.is_empty()).map(str::to_owned),
    };
    let Some(usage) = response.get("usage").filter(|u| u.is_object()) else {
        return;
    };
    let count = |key: &str| usage.get(key).and_then(token_count);
    let input = count("input_tokens");
    let output = count("output_tokens");
    if input.is_none() && output.is_none() {
        return;
    }
    llm.input_tokens = input;
    llm.output_tokens = output;
    llm.total_tokens = count("total_tokens").or_else(|| Some(input?.saturating_add(output?)));
    llm.cached_input_tokens = usage
        .pointer("/input_tokens_details/cached_tokens")
        .and_then(token_count)
        .filter(|n| *n > 0);
    llm.reasoning_tokens = usage
        .pointer("/output_tokens_details/reasoning_tokens")
        .and_then(token_count)
        .filter(|n| *n > 0);
    llm.usage_source = Some("reported".to_string());
}

/// A failed or incomplete response is an error span.
fn response_error(response: &Value) -> Option<SpanError> {
    match response.get("status").and_then(Value::as_str)? {
        "failed" => {
            let error = response.get("error").filter(|e| e.is_object());
            Some(SpanError {
                kind: error
                    .and_then(|e| non_empty(e.get("code")))
                    .unwrap_or_else(|| "response_failed".to_string()),
                message: error
                    .and_then(|e| non_empty(e.get("message")))
                    .unwrap_or_else(|| "the response failed".to_string()),
            })
        }
        "incomplete" => {
            let reason = response
                .pointer("/incomplete_details/reason")
                .and_then(Value::as_str)
                .unwrap_or("unknown");
            Some(SpanError {
                kind: "response_incomplete".to_string(),
                message: format!("the response is incomplete: {reason}"),
            })
        }
        _ => None,
    }
}

/// A streamed response put back together.
#[derive(Debug, Default)]
struct Stream {
    /// The final `response` (or the latest snapshot, for a cut stream); `None` when no event
    /// parsed.
    response: Option<Value>,
    first_token_end: Option<u64>,
    /// An `error` event.
    error: Option<SpanError>,
    /// A terminal event arrived.
    terminal: bool,
    skipped: Unparsed,
}

/// Output items by `output_index`.
type Items = BTreeMap<u64, Value>;

fn reassemble(events: &[sse::Event]) -> Stream {
    let mut stream = Stream::default();
    let mut snapshot: Option<Value> = None;
    let mut items = Items::new();
    for event in events {
        let data = event.data.trim();
        if data.is_empty() || data == "[DONE]" {
            continue;
        }
        let value = match event_object(data) {
            Ok(v) => v,
            Err(why) => {
                if event.event.as_deref() == Some("error") {
                    stream.error.get_or_insert_with(|| SpanError {
                        kind: "stream_error".into(),
                        message: data.to_string(),
                    });
                } else if event.complete {
                    stream.skipped.record(event, why);
                }
                continue;
            }
        };
        // The data's `type` is authoritative; the `event:` line repeats it.
        let kind = value
            .get("type")
            .and_then(Value::as_str)
            .or(event.event.as_deref())
            .unwrap_or_default();
        let index = value.get("output_index").and_then(Value::as_u64);
        let delta = value.get("delta").and_then(Value::as_str);
        let mut generated = false;
        match kind {
            "response.created" | "response.in_progress" | "response.queued" => {
                if let Some(r) = value.get("response").filter(|r| r.is_object()) {
                    snapshot = Some(r.clone());
                }
            }
            "response.completed" | "response.failed" | "response.incomplete" => {
                if let Some(r) = value.get("response").filter(|r| r.is_object()) {
                    snapshot = Some(r.clone());
                }
                stream.terminal = true;
            }
            "error" => {
                stream.error.get_or_insert_with(|| SpanError {
                    kind: non_empty(value.get("code"))
                        .or_else(|| non_empty(value.pointer("/error/code")))
                        .or_else(|| non_empty(value.pointer("/error/type")))
                        .unwrap_or_else(|| "stream_error".into()),
                    message: non_empty(value.get("message"))
                        .or_else(|| non_empty(value.pointer("/error/message")))
                        .unwrap_or_else(|| "the upstream reported an error mid-stream".into()),
                });
            }
            "response.output_item.added" | "response.output_item.done" => {
                if let (Some(i), Some(item)) = (index, value.get("item")) {
                    items.insert(i, item.clone());
                }
            }
            "response.content_part.added" | "response.content_part.done" => {
                if let (Some(i), Some(part)) = (index, value.get("part")) {
                    let content = content_index(&value);
                    set_part(message(&mut items, i), content, part.clone());
                }
            }
            "response.output_text.delta" | "response.refusal.delta" => {
                if let (Some(i), Some(d)) = (index, delta) {
                    let (part_type, field) = if kind == "response.output_text.delta" {
                        ("output_text", "text")
                    } else {
                        ("refusal", "refusal")
                    };
                    let part = part(message(&mut items, i), content_index(&value), part_type);
                    append(part, field, d);
                    generated = !d.is_empty();
                }
            }
            "response.output_text.done" => {
                if let (Some(i), Some(t)) = (index, value.get("text").and_then(Value::as_str)) {
                    let part = part(message(&mut items, i), content_index(&value), "output_text");
                    if let Some(part) = part {
                        part.insert("text".into(), t.into());
                    }
                }
            }
            "response.function_call_arguments.delta" => {
                if let (Some(i), Some(d)) = (index, delta) {
                    append(function_call(&mut items, i), "arguments", d);
                    generated = true;
                }
            }
            "response.function_call_arguments.done" => {
                if let (Some(i), Some(a)) = (index, value.get("arguments").and_then(Value::as_str))
                {
                    if let Some(call) = function_call(&mut items, i) {
                        call.insert("arguments".into(), a.into());
                    }
                }
            }
            "response.reasoning_summary_text.delta" | "response.reasoning_text.delta" => {
                if let (Some(i), Some(d)) = (index, delta) {
                    let key = if kind == "response.reasoning_text.delta" {
                        "content"
                    } else {
                        "summary"
                    };
                    let at = value
                        .get("summary_index")
                        .or_else(|| value.get("content_index"))
                        .and_then(Value::as_u64)
                        .unwrap_or(0);
                    let item = item_of(&mut items, i, || json!({"type": "reasoning"}));
                    let part = nth_part(item, key, at, "summary_text");
                    append(part, "text", d);
                    generated = !d.is_empty();
                }
            }
            // Other events (web search progress, annotations, audio, …) change nothing that the
            // terminal response does not carry.
            _ => {}
        }
        if generated && stream.first_token_end.is_none() {
            stream.first_token_end = Some(event.end);
        }
    }
    stream.response = match snapshot {
        Some(mut response) => {
            let has_output = response
                .get("output")
                .and_then(Value::as_array)
                .is_some_and(|o| !o.is_empty());
            if !has_output && !items.is_empty() {
                if let Some(obj) = response.as_object_mut() {
                    obj.insert("output".into(), Value::Array(items.into_values().collect()));
                }
            }
            Some(response)
        }
        None if !items.is_empty() => Some(json!({
            "object": "response",
            "status": "in_progress",
            "output": items.into_values().collect::<Vec<_>>(),
        })),
        None => None,
    };
    stream
}

fn content_index(value: &Value) -> u64 {
    value
        .get("content_index")
        .and_then(Value::as_u64)
        .unwrap_or(0)
}

/// The item at `index`, created by `make` if absent or not an object.
fn item_of(
    items: &mut Items,
    index: u64,
    make: impl Fn() -> Value,
) -> Option<&mut Map<String, Value>> {
    let item = items.entry(index).or_insert_with(&make);
    if !item.is_object() {
        *item = make();
    }
    item.as_object_mut()
}

fn message(items: &mut Items, index: u64) -> Option<&mut Map<String, Value>> {
    item_of(
        items,
        index,
        || json!({"type": "message", "role": "assistant", "status": "in_progress", "content": []}),
    )
}

fn function_call(items: &mut Items, index: u64) -> Option<&mut Map<String, Value>> {
    item_of(
        items,
        index,
        || json!({"type": "function_call", "status": "in_progress", "arguments": ""}),
    )
}

/// `item[key][at]` as an object, created (of `part_type`) if missing. An index past the end
/// appends, so a hostile index never allocates more than one part per event.
fn nth_part<'a>(
    item: Option<&'a mut Map<String, Value>>,
    key: &str,
    at: u64,
    part_type: &str,
) -> Option<&'a mut Map<String, Value>> {
    let list = item?
        .entry(key.to_string())
        .or_insert_with(|| Value::Array(Vec::new()));
    if !list.is_array() {
        *list = Value::Array(Vec::new());
    }
    let parts = list.as_array_mut()?;
    let at = usize::try_from(at).unwrap_or(usize::MAX);
    let slot = if at < parts.len() {
        at
    } else {
        parts.push(json!({ "type": part_type }));
        parts.len() - 1
    };
    let part = parts.get_mut(slot)?;
    if !part.is_object() {
        *part = json!({ "type": part_type });
    }
    part.as_object_mut()
}

fn part<'a>(
    item: Option<&'a mut Map<String, Value>>,
    at: u64,
    part_type: &str,
) -> Option<&'a mut Map<String, Value>> {
    nth_part(item, "content", at, part_type)
}

fn set_part(item: Option<&mut Map<String, Value>>, at: u64, part: Value) {
    let (Some(slot), Value::Object(fields)) = (nth_part(item, "content", at, "output_text"), part)
    else {
        return;
    };
    // Keep text already gathered from deltas if the part event carries none.
    for (k, v) in fields {
        let keep_existing = matches!(&v, Value::String(s) if s.is_empty())
            && slot
                .get(&k)
                .is_some_and(|e| e.as_str().is_some_and(|s| !s.is_empty()));
        if !keep_existing {
            slot.insert(k, v);
        }
    }
}

/// Appends `piece` to the string field `key` (created empty).
fn append(obj: Option<&mut Map<String, Value>>, key: &str, piece: &str) {
    let Some(obj) = obj else {
        return;
    };
    match obj.get_mut(key) {
        Some(Value::String(s)) => s.push_str(piece),
        _ => {
            obj.insert(key.to_string(), Value::String(piece.to_string()));
        }
    }
}

/// The prompt, for counting: instructions, input (text or items) and tool definitions.
fn input_text(body: &Value) -> Text {
    let mut text = Text::new();
    if let Some(s) = body.get("instructions").and_then(Value::as_str) {
        text.push(s);
    }
    match body.get("input") {
        Some(Value::String(s)) => text.push(s),
        Some(Value::Array(items)) => {
            for item in items {
                push_item(item, &mut text);
            }
        }
        _ => {}
    }
    if let Some(tools) = body.get("tools").filter(|t| !t.is_null()) {
        text.push_json(tools);
    }
    text
}

/// The generated text of a `response`: its output items.
fn output_text(response: &Value) -> Text {
    let mut text = Text::new();
    let items = response.get("output").and_then(Value::as_array);
    for item in items.into_iter().flatten() {
        push_item(item, &mut text);
    }
    text
}

/// The countable text of one input or output item.
fn push_item(item: &Value, text: &mut Text) {
    match item.get("type").and_then(Value::as_str) {
        Some("function_call") => {
            for key in ["name", "arguments"] {
                if let Some(s) = item.get(key).and_then(Value::as_str) {
                    text.push(s);
                }
            }
        }
        Some("function_call_output") => {
            if let Some(output) = item.get("output") {
                text.push_strings(output);
            }
        }
        Some("reasoning") => {
            for key in ["summary", "content"] {
                if let Some(parts) = item.get(key) {
                    push_content(Some(parts), text);
                }
            }
        }
        _ => {
            push_content(item.get("content"), text);
            if let Some(refusals) = item.get("content").and_then(Value::as_array) {
                for part in refusals {
                    if let Some(s) = part.get("refusal").and_then(Value::as_str) {
                        text.push(s);
                    }
                }
            }
        }
    }
}

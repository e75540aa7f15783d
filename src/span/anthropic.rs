//! Anthropic's Messages API (`…/messages`, usually behind a route with `strip_prefix`):
//! provider `anthropic` (or the route's `provider`), operation `messages`.
//!
//! `output` is always an Anthropic `message` object (`id`, `type`, `role`, `model`, `content`
//! blocks, `stop_reason`, `stop_sequence`, `usage`). Streamed, it is rebuilt from the events:
//! `message_start` (the message and its first usage), `content_block_start`,
//! `content_block_delta` (`text_delta`, `input_json_delta` — concatenated and parsed into the
//! tool_use block's `input` —, `thinking_delta`, `signature_delta`, `citations_delta`; any other
//! delta's string fields are appended to the block as they come), `content_block_stop`,
//! `message_delta` (stop reason, and usage that is cumulative: each count it carries *replaces*
//! the running one), `message_stop` (the logical end), `ping` (ignored) and `error` (an error
//! span; what came before is kept).
//!
//! Anthropic reports prompt-cache tokens apart from `input_tokens`; the span's `input_tokens`
//! adds `cache_creation_input_tokens` and `cache_read_input_tokens` to it, so every provider's
//! `input_tokens` means "all prompt tokens". The cache parts are kept in `cache_write_tokens`
//! and `cached_input_tokens` and priced on their own.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use super::assemble::{describe_error, Exchange, Form, Outcome};
use super::estimate::{Estimate, Text};
use super::openai::{
    default_name, event_object, non_empty, push_content, read_request, token_count, Unparsed,
};
use super::{sse, Kind, LlmInfo, SpanError};

const NOT_PARAMS: &[&str] = &["model", "messages", "system", "stream"];

pub(super) fn messages(x: &Exchange<'_>) -> Outcome {
    let mut llm = LlmInfo {
        provider: Some(x.provider("anthropic")),
        operation: Some("messages".to_string()),
        ..LlmInfo::default()
    };
    read_request(&x.request.value, NOT_PARAMS, &mut llm);
    llm.request_model = x.request_model();
    let mut outcome = Outcome::new(Kind::Llm, default_name("messages", &llm));
    match x.form(llm.stream) {
        Form::Sse => {
            let events = sse::parse(&x.response.bytes);
            let stream = reassemble(&events);
            llm.stream = true;
            outcome.streamed = true;
            outcome.finished = stream.stopped;
            outcome.first_token_end = stream.first_token_end;
            outcome.body_error = stream.error;
            outcome.notes.extend(stream.notes);
            match stream.message {
                Some(message) => {
                    read_message(&message, &mut llm);
                    outcome.output = message;
                }
                None => outcome.output = x.response.value.clone(),
            }
        }
        Form::Json => {
            let body = &x.response.value;
            if body.get("type").and_then(Value::as_str) == Some("error") {
                outcome.body_error = Some(to_span_error(body));
            } else {
                read_message(body, &mut llm);
            }
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

/// Model, stop reason and usage of a `message`.
fn read_message(message: &Value, llm: &mut LlmInfo) {
    llm.response_model = non_empty(message.get("model"));
    llm.finish_reason = non_empty(message.get("stop_reason"));
    let Some(usage) = message.get("usage").filter(|u| u.is_object()) else {
        return;
    };
    let count = |key: &str| usage.get(key).and_then(token_count);
    let (fresh, output) = (count("input_tokens"), count("output_tokens"));
    let write = count("cache_creation_input_tokens");
    let read = count("cache_read_input_tokens");
    if fresh.is_none() && output.is_none() {
        return;
    }
    let input = [fresh, write, read]
        .into_iter()
        .flatten()
        .fold(0u64, u64::saturating_add);
    llm.input_tokens = Some(input);
    llm.output_tokens = output;
    llm.total_tokens = Some(input.saturating_add(output.unwrap_or(0)));
    llm.cached_input_tokens = read.filter(|n| *n > 0);
    llm.cache_write_tokens = write.filter(|n| *n > 0);
    llm.usage_source = Some("reported".to_string());
}

/// An Anthropic error body or event: `{"type":"error","error":{"type","message"}}`.
fn to_span_error(value: &Value) -> SpanError {
    let (kind, message) = describe_error(value);
    SpanError {
        kind: kind.unwrap_or_else(|| "stream_error".to_string()),
        message: message.unwrap_or_else(|| "the upstream reported an error mid-stream".to_string()),
    }
}

#[derive(Debug, Default)]
struct Stream {
    message: Option<Value>,
    first_token_end: Option<u64>,
    error: Option<SpanError>,
    /// `message_stop` arrived.
    stopped: bool,
    notes: Vec<String>,
}

/// One content block being streamed.
#[derive(Debug)]
struct Block {
    block: Map<String, Value>,
    /// `input_json_delta` pieces, parsed into `input` at the end.
    partial_json: Option<String>,
}

fn reassemble(events: &[sse::Event]) -> Stream {
    let mut stream = Stream::default();
    let mut message: Option<Map<String, Value>> = None;
    let mut usage = Map::new();
    let mut blocks: BTreeMap<u64, Block> = BTreeMap::new();
    let mut skipped = Unparsed::default();
    let mut unknown: BTreeMap<String, usize> = BTreeMap::new();
    for event in events {
        let data = event.data.trim();
        if data.is_empty() {
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
                    skipped.record(event, why);
                }
                continue;
            }
        };
        let kind = value
            .get("type")
            .and_then(Value::as_str)
            .or(event.event.as_deref())
            .unwrap_or_default();
        let index = value.get("index").and_then(Value::as_u64);
        let mut generated = false;
        match kind {
            "message_start" => {
                if let Some(m) = value.get("message").and_then(Value::as_object) {
                    replace_counts(&mut usage, m.get("usage"));
                    message = Some(m.clone());
                }
            }
            "content_block_start" => {
                if let (Some(i), Some(b)) =
                    (index, value.get("content_block").and_then(Value::as_object))
                {
                    blocks.insert(
                        i,
                        Block {
                            block: b.clone(),
                            partial_json: None,
                        },
                    );
                }
            }
            "content_block_delta" => {
                if let (Some(i), Some(delta)) =
                    (index, value.get("delta").and_then(Value::as_object))
                {
                    let block = blocks.entry(i).or_insert_with(|| Block {
                        block: Map::new(),
                        partial_json: None,
                    });
                    generated = block.apply(delta);
                }
            }
            "message_delta" => {
                if let (Some(m), Some(delta)) = (
                    message.as_mut(),
                    value.get("delta").and_then(Value::as_object),
                ) {
                    for (k, v) in delta {
                        m.insert(k.clone(), v.clone());
                    }
                } else if let Some(delta) = value.get("delta").and_then(Value::as_object) {
                    message = Some(delta.clone());
                }
                replace_counts(&mut usage, value.get("usage"));
            }
            "message_stop" => stream.stopped = true,
            "error" => {
                stream.error.get_or_insert_with(|| to_span_error(&value));
            }
            "content_block_stop" | "ping" => {}
            other => *unknown.entry(other.to_string()).or_default() += 1,
        }
        if generated && stream.first_token_end.is_none() {
            stream.first_token_end = Some(event.end);
        }
    }
    if let Some(note) = skipped.note() {
        stream.notes.push(note);
    }
    if !unknown.is_empty() {
        let list: Vec<String> = unknown.iter().map(|(k, n)| format!("{k}×{n}")).collect();
        stream.notes.push(format!(
            "stream events of unknown types (kept out of the message): {}",
            list.join(", ")
        ));
    }
    if message.is_none() && blocks.is_empty() {
        return stream;
    }
    let mut message = message.unwrap_or_else(|| {
        let mut m = Map::new();
        m.insert("type".into(), json!("message"));
        m.insert("role".into(), json!("assistant"));
        m
    });
    let content: Vec<Value> = blocks
        .into_values()
        .map(|b| b.finish(&mut stream.notes))
        .collect();
    message.insert("content".into(), Value::Array(content));
    for key in ["stop_reason", "stop_sequence"] {
        message.entry(key).or_insert(Value::Null);
    }
    if !usage.is_empty() {
        message.insert("usage".into(), Value::Object(usage));
    }
    stream.message = Some(Value::Object(message));
    stream
}

/// Usage in streams is cumulative: each count present replaces the running one.
fn replace_counts(running: &mut Map<String, Value>, usage: Option<&Value>) {
    let Some(usage) = usage.and_then(Value::as_object) else {
        return;
    };
    for (key, value) in usage {
        if !value.is_null() {
            running.insert(key.clone(), value.clone());
        }
    }
}

impl Block {
    /// Applies a delta; true when it carried generated output.
    fn apply(&mut self, delta: &Map<String, Value>) -> bool {
        let text = |key: &str| delta.get(key).and_then(Value::as_str).unwrap_or_default();
        match delta
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or_default()
        {
            "text_delta" => self.append("text", text("text")),
            "input_json_delta" => {
                let piece = text("partial_json");
                self.partial_json
                    .get_or_insert_with(String::new)
                    .push_str(piece);
                !piece.is_empty()
            }
            "thinking_delta" => self.append("thinking", text("thinking")),
            "signature_delta" => {
                self.append("signature", text("signature"));
                false
            }
            "citations_delta" => {
                if let Some(citation) = delta.get("citation") {
                    let list = self
                        .block
                        .entry("citations")
                        .or_insert_with(|| Value::Array(Vec::new()));
                    if let Value::Array(items) = list {
                        items.push(citation.clone());
                    }
                }
                false
            }
            // A delta type this version does not know: keep its text fields.
            _ => {
                let mut generated = false;
                for (key, value) in delta {
                    if let (false, Some(piece)) = (key == "type", value.as_str()) {
                        generated |= self.append(key, piece);
                    }
                }
                generated
            }
        }
    }

    fn append(&mut self, key: &str, piece: &str) -> bool {
        match self.block.get_mut(key) {
            Some(Value::String(s)) => s.push_str(piece),
            _ => {
                self.block
                    .insert(key.to_string(), Value::String(piece.into()));
            }
        }
        !piece.is_empty()
    }

    /// The finished block: streamed tool input parsed into `input`.
    fn finish(mut self, notes: &mut Vec<String>) -> Value {
        if let Some(json) = self.partial_json.take() {
            let input = if json.trim().is_empty() {
                Value::Object(Map::new())
            } else {
                match serde_json::from_str::<Value>(&json) {
                    Ok(v) => v,
                    Err(e) => {
                        notes.push(format!(
                            "a tool_use block's streamed input is not valid JSON ({e}); kept as text"
                        ));
                        Value::String(json)
                    }
                }
            };
            self.block.insert("input".into(), input);
        }
        Value::Object(self.block)
    }
}

/// The prompt, for counting: system, messages (text, tool calls, tool results) and tools.
fn input_text(body: &Value) -> Text {
    let mut text = Text::new();
    push_blocks(body.get("system"), &mut text);
    let messages = body.get("messages").and_then(Value::as_array);
    for message in messages.into_iter().flatten() {
        push_blocks(message.get("content"), &mut text);
    }
    if let Some(tools) = body.get("tools").filter(|t| !t.is_null()) {
        text.push_json(tools);
    }
    text
}

/// The generated text of a `message`.
fn output_text(message: &Value) -> Text {
    let mut text = Text::new();
    push_blocks(message.get("content"), &mut text);
    text
}

/// Text of a content value: a string, or blocks (text, thinking, tool_use input, tool_result
/// content).
fn push_blocks(content: Option<&Value>, text: &mut Text) {
    let Some(Value::Array(blocks)) = content else {
        push_content(content, text);
        return;
    };
    for block in blocks {
        match block.get("type").and_then(Value::as_str) {
            Some("tool_use") | Some("server_tool_use") => {
                if let Some(name) = block.get("name").and_then(Value::as_str) {
                    text.push(name);
                }
                if let Some(input) = block.get("input") {
                    text.push_json(input);
                }
            }
            Some("tool_result") => push_blocks(block.get("content"), text),
            Some("thinking") => {
                if let Some(s) = block.get("thinking").and_then(Value::as_str) {
                    text.push(s);
                }
            }
            _ => {
                if let Some(s) = block.get("text").and_then(Value::as_str) {
                    text.push(s);
                }
            }
        }
    }
}

//! OpenAI chat completions (`…/chat/completions`): the request's model, stream flag and params;
//! the response's model, usage and finish reason; and the reassembly of a streamed answer into
//! the `chat.completion` shape, so the UI reads streamed and non-streamed calls alike.
//!
//! Reads bodies only: status, endings and TTFT timing are `assemble`'s.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::assemble::{describe_error, Exchange, Form, Outcome};
use super::{sse, Kind, LlmInfo, SpanError};

/// Request keys that are not params: they have their own span fields.
const NOT_PARAMS: &[&str] = &["model", "messages", "stream"];

/// A chat completion call.
pub(super) fn chat(x: &Exchange<'_>) -> Outcome {
    let mut llm = LlmInfo {
        provider: Some(x.provider_hint.unwrap_or("openai").to_string()),
        operation: Some("chat".to_string()),
        ..LlmInfo::default()
    };
    read_request(&x.request.value, &mut llm);
    let name = match &llm.request_model {
        Some(model) => format!("chat {model}"),
        None => "chat".to_string(),
    };
    let mut outcome = Outcome::new(Kind::Llm, name);
    match x.form(llm.stream) {
        Form::Sse => {
            let events = sse::parse(&x.response.bytes);
            let stream = reassemble(&events, &mut llm);
            llm.stream = true;
            outcome.streamed = true;
            outcome.finished = stream.done;
            outcome.first_token_end = stream.first_token_end;
            outcome.body_error = stream.error;
            if stream.skipped > 0 {
                outcome.notes.push(format!(
                    "skipped {} stream event(s) whose data was not JSON",
                    stream.skipped
                ));
            }
            outcome.output = match stream.output {
                Some(output) => output,
                // Nothing parsed: the raw text is all there is to show.
                None => x.response.value.clone(),
            };
        }
        Form::Json => {
            read_response(&x.response.value, &mut llm);
            outcome.output = x.response.value.clone();
            outcome.finished = !x.response.truncated;
        }
        Form::Failed | Form::Other => outcome.output = x.response.value.clone(),
    }
    outcome.llm = Some(llm);
    outcome
}

/// Model, stream flag and every other top-level key as sent.
fn read_request(body: &Value, llm: &mut LlmInfo) {
    let Some(obj) = body.as_object() else {
        return;
    };
    llm.request_model = non_empty(obj.get("model"));
    llm.stream = obj.get("stream") == Some(&Value::Bool(true));
    llm.params = obj
        .iter()
        .filter(|(k, _)| !NOT_PARAMS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
}

/// A non-streamed `chat.completion`.
fn read_response(body: &Value, llm: &mut LlmInfo) {
    llm.response_model = non_empty(body.get("model"));
    if let Some(usage) = body.get("usage") {
        read_usage(usage, llm);
    }
    llm.finish_reason = body
        .get("choices")
        .and_then(|c| c.get(0))
        .and_then(|c| non_empty(c.get("finish_reason")));
}

/// OpenAI's `usage` block → token counts, marked "reported".
fn read_usage(usage: &Value, llm: &mut LlmInfo) {
    let count = |key: &str| usage.get(key).and_then(token_count);
    let input = count("prompt_tokens");
    let output = count("completion_tokens");
    let total = count("total_tokens").or_else(|| Some(input?.saturating_add(output?)));
    if input.is_none() && output.is_none() && total.is_none() {
        return;
    }
    llm.input_tokens = input;
    llm.output_tokens = output;
    llm.total_tokens = total;
    llm.usage_source = Some("reported".to_string());
}

/// A token count: a non-negative integer (some servers send `12.0`).
fn token_count(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| {
        let f = v.as_f64()?;
        (f.is_finite() && f >= 0.0 && f.fract() == 0.0 && f <= u64::MAX as f64).then_some(f as u64)
    })
}

fn non_empty(v: Option<&Value>) -> Option<String> {
    v.and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// A streamed answer put back together.
#[derive(Debug, Default)]
struct Stream {
    /// The `chat.completion`-shaped output; `None` when no chunk parsed.
    output: Option<Value>,
    /// Offset just past the first event that carried content, refusal, reasoning or tool calls.
    first_token_end: Option<u64>,
    error: Option<SpanError>,
    /// `data: [DONE]` arrived.
    done: bool,
    /// Complete events whose data was not JSON.
    skipped: usize,
}

/// Running state of one choice across chunks.
#[derive(Debug, Default)]
struct ChoiceAcc {
    role: Option<String>,
    content: String,
    saw_content: bool,
    refusal: Option<String>,
    reasoning: Option<String>,
    tool_calls: BTreeMap<u64, ToolCallAcc>,
    /// Legacy `function_call` deltas (the pre-tools functions API).
    function_call: Option<ToolCallAcc>,
    finish_reason: Option<String>,
    logprobs: Option<Map<String, Value>>,
}

#[derive(Debug, Default)]
struct ToolCallAcc {
    id: Option<String>,
    kind: Option<String>,
    name: Option<String>,
    arguments: String,
}

/// Chunk-level fields, first non-empty value wins (Azure's first chunk has an empty model).
#[derive(Debug, Default)]
struct StreamAcc {
    id: Option<String>,
    model: Option<String>,
    created: Option<Value>,
    system_fingerprint: Option<String>,
    usage: Option<Value>,
    choices: BTreeMap<u64, ChoiceAcc>,
}

/// Folds the chunks of a streamed chat completion, up to `data: [DONE]`.
fn reassemble(events: &[sse::Event], llm: &mut LlmInfo) -> Stream {
    let mut stream = Stream::default();
    let mut acc = StreamAcc::default();
    let mut parsed = 0usize;
    for event in events {
        let data = event.data.trim();
        if event.event.as_deref() == Some("error") {
            stream.error.get_or_insert_with(|| stream_error(data));
            continue;
        }
        if data.is_empty() {
            continue; // a keep-alive
        }
        if data == "[DONE]" {
            stream.done = true;
            break;
        }
        let chunk = match serde_json::from_str::<Value>(data) {
            Ok(chunk @ Value::Object(_)) => chunk,
            // A cut-off last event is the capture's or the client's doing, not bad data.
            _ => {
                if event.complete {
                    stream.skipped += 1;
                }
                continue;
            }
        };
        if let Some(e) = chunk_error(&chunk) {
            stream.error.get_or_insert(e);
            continue;
        }
        parsed += 1;
        if acc.apply(&chunk) && stream.first_token_end.is_none() {
            stream.first_token_end = Some(event.end);
        }
    }
    if parsed > 0 {
        llm.response_model = acc.model.clone();
        if let Some(usage) = &acc.usage {
            read_usage(usage, llm);
        }
        llm.finish_reason = acc
            .choices
            .values()
            .next()
            .and_then(|c| c.finish_reason.clone());
        stream.output = Some(acc.into_completion());
    }
    stream
}

/// An error reported in-band: `{"error":{…}}` (OpenAI) or `{"object":"error",…}` (older vLLM).
fn chunk_error(chunk: &Value) -> Option<SpanError> {
    let has_error = chunk.get("error").is_some_and(|e| !e.is_null())
        || chunk.get("object").and_then(Value::as_str) == Some("error");
    has_error.then(|| to_span_error(describe_error(chunk)))
}

/// The data of an `event: error`, JSON or text.
fn stream_error(data: &str) -> SpanError {
    let value = serde_json::from_str::<Value>(data).unwrap_or_else(|_| Value::String(data.into()));
    to_span_error(describe_error(&value))
}

fn to_span_error((kind, message): (Option<String>, Option<String>)) -> SpanError {
    SpanError {
        kind: kind.unwrap_or_else(|| "stream_error".to_string()),
        message: message.unwrap_or_else(|| "the upstream reported an error mid-stream".to_string()),
    }
}

impl StreamAcc {
    /// Applies one chunk; true when it carried generated output (the TTFT event).
    fn apply(&mut self, chunk: &Value) -> bool {
        set_once(&mut self.id, chunk.get("id"));
        set_once(&mut self.model, chunk.get("model"));
        if self.created.is_none() {
            self.created = chunk.get("created").filter(|c| c.is_number()).cloned();
        }
        if let Some(fp) = non_empty(chunk.get("system_fingerprint")) {
            self.system_fingerprint = Some(fp);
        }
        if let Some(usage) = chunk.get("usage").filter(|u| u.is_object()) {
            self.usage = Some(usage.clone()); // the last one is the final count
        }
        let mut generated = false;
        let choices = chunk.get("choices").and_then(Value::as_array);
        for (pos, choice) in choices.into_iter().flatten().enumerate() {
            let index = choice
                .get("index")
                .and_then(Value::as_u64)
                .unwrap_or(pos as u64);
            generated |= self.choices.entry(index).or_default().apply(choice);
        }
        generated
    }

    fn into_completion(self) -> Value {
        let mut out = Map::new();
        out.insert("id".into(), self.id.map_or(Value::Null, Value::String));
        out.insert("object".into(), Value::String("chat.completion".into()));
        out.insert("created".into(), self.created.unwrap_or(Value::Null));
        out.insert(
            "model".into(),
            self.model.map_or(Value::Null, Value::String),
        );
        if let Some(fp) = self.system_fingerprint {
            out.insert("system_fingerprint".into(), Value::String(fp));
        }
        let choices = self
            .choices
            .into_iter()
            .map(|(index, c)| c.into_choice(index))
            .collect();
        out.insert("choices".into(), Value::Array(choices));
        if let Some(usage) = self.usage {
            out.insert("usage".into(), usage);
        }
        Value::Object(out)
    }
}

impl ChoiceAcc {
    fn apply(&mut self, choice: &Value) -> bool {
        if let Some(reason) = non_empty(choice.get("finish_reason")) {
            self.finish_reason = Some(reason);
        }
        if let Some(logprobs) = choice.get("logprobs").and_then(Value::as_object) {
            let kept = self.logprobs.get_or_insert_with(Map::new);
            for (key, value) in logprobs {
                match (kept.get_mut(key), value) {
                    (Some(Value::Array(have)), Value::Array(more)) => {
                        have.extend(more.iter().cloned())
                    }
                    (_, Value::Null) => {}
                    _ => {
                        kept.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        let Some(delta) = choice.get("delta") else {
            return false;
        };
        let mut generated = false;
        set_once(&mut self.role, delta.get("role"));
        if let Some(text) = delta.get("content").and_then(Value::as_str) {
            self.content.push_str(text);
            self.saw_content = true;
            generated |= !text.is_empty();
        }
        for (key, slot) in [
            ("refusal", &mut self.refusal),
            ("reasoning_content", &mut self.reasoning),
        ] {
            if let Some(text) = delta.get(key).and_then(Value::as_str) {
                slot.get_or_insert_with(String::new).push_str(text);
                generated |= !text.is_empty();
            }
        }
        if let Some(calls) = delta.get("tool_calls").and_then(Value::as_array) {
            for call in calls {
                let index = self.tool_call_index(call);
                self.tool_calls.entry(index).or_default().apply(call);
                generated = true;
            }
        }
        if let Some(call) = delta.get("function_call").filter(|f| f.is_object()) {
            self.function_call
                .get_or_insert_with(Default::default)
                .apply_function(call);
            generated = true;
        }
        generated
    }

    /// Tool calls are keyed by their `index`; a server that omits it is followed by `id`: a new
    /// id opens a call, no id continues the last one.
    fn tool_call_index(&self, call: &Value) -> u64 {
        if let Some(index) = call.get("index").and_then(Value::as_u64) {
            return index;
        }
        let id = call
            .get("id")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty());
        let last = self.tool_calls.keys().next_back().copied();
        match (id, last) {
            (Some(id), _) => self
                .tool_calls
                .iter()
                .find(|(_, c)| c.id.as_deref() == Some(id))
                .map(|(i, _)| *i)
                .unwrap_or_else(|| last.map_or(0, |l| l.saturating_add(1))),
            (None, Some(last)) => last,
            (None, None) => 0,
        }
    }

    fn into_choice(self, index: u64) -> Value {
        let tool_calls: Vec<Value> = self
            .tool_calls
            .into_values()
            .map(ToolCallAcc::into_tool_call)
            .collect();
        let mut message = Map::new();
        message.insert(
            "role".into(),
            Value::String(self.role.unwrap_or_else(|| "assistant".into())),
        );
        // As in a non-streamed answer: no text (e.g. only tool calls) is `null`, not "".
        let content = if self.saw_content && (!self.content.is_empty() || tool_calls.is_empty()) {
            Value::String(self.content)
        } else {
            Value::Null
        };
        message.insert("content".into(), content);
        if let Some(refusal) = self.refusal {
            message.insert("refusal".into(), Value::String(refusal));
        }
        if let Some(reasoning) = self.reasoning {
            message.insert("reasoning_content".into(), Value::String(reasoning));
        }
        if !tool_calls.is_empty() {
            message.insert("tool_calls".into(), Value::Array(tool_calls));
        }
        if let Some(call) = self.function_call {
            message.insert("function_call".into(), call.into_function());
        }
        let mut choice = Map::new();
        choice.insert("index".into(), Value::from(index));
        choice.insert("message".into(), Value::Object(message));
        if let Some(logprobs) = self.logprobs {
            choice.insert("logprobs".into(), Value::Object(logprobs));
        }
        choice.insert(
            "finish_reason".into(),
            self.finish_reason.map_or(Value::Null, Value::String),
        );
        Value::Object(choice)
    }
}

impl ToolCallAcc {
    /// id, type and name are set once; arguments arrive in pieces and are concatenated.
    fn apply(&mut self, call: &Value) {
        set_once(&mut self.id, call.get("id"));
        set_once(&mut self.kind, call.get("type"));
        if let Some(function) = call.get("function") {
            self.apply_function(function);
        }
    }

    fn apply_function(&mut self, function: &Value) {
        set_once(&mut self.name, function.get("name"));
        if let Some(piece) = function.get("arguments").and_then(Value::as_str) {
            self.arguments.push_str(piece);
        }
    }

    fn into_function(self) -> Value {
        let mut function = Map::new();
        function.insert("name".into(), self.name.map_or(Value::Null, Value::String));
        function.insert("arguments".into(), Value::String(self.arguments));
        Value::Object(function)
    }

    fn into_tool_call(mut self) -> Value {
        let mut call = Map::new();
        call.insert(
            "id".into(),
            self.id.take().map_or(Value::Null, Value::String),
        );
        call.insert(
            "type".into(),
            Value::String(self.kind.take().unwrap_or_else(|| "function".into())),
        );
        call.insert("function".into(), self.into_function());
        Value::Object(call)
    }
}

/// Sets `slot` from a non-empty string, unless already set.
fn set_once(slot: &mut Option<String>, v: Option<&Value>) {
    if slot.is_none() {
        *slot = non_empty(v);
    }
}

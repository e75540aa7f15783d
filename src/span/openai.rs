//! OpenAI chat completions (`…/chat/completions`): the request's model, stream flag and params;
//! the response's model, usage and finish reason; and the reassembly of a streamed answer into
//! the `chat.completion` shape, so the UI reads streamed and non-streamed calls alike. Also the
//! helpers the other OpenAI-shaped operations share (usage, in-band errors, text of content).
//!
//! Reads bodies only: status, endings and TTFT timing are `assemble`'s.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::assemble::{describe_error, Exchange, Form, Outcome};
use super::estimate::{Estimate, Text, REPLY_PRIMING_TOKENS, TOKENS_PER_MESSAGE};
use super::{sse, Kind, LlmInfo, SpanError};

/// Request keys that are not params: they have their own span fields.
const NOT_PARAMS: &[&str] = &["model", "messages", "stream"];
const NOT_PARAMS_TEXT: &[&str] = &["model", "prompt", "stream"];

/// Which OpenAI API a call is; the two share their stream format but not their shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// `chat.completion`: choices carry a `message` (streamed: a `delta`).
    Chat,
    /// The legacy `text_completion`: choices carry `text`.
    Text,
}

/// A chat completion call.
pub(super) fn chat(x: &Exchange<'_>) -> Outcome {
    call(x, Shape::Chat)
}

/// A legacy text completion call (`…/completions`): same stream framing as chat (`data:` chunks,
/// `[DONE]`, usage only with `stream_options.include_usage`), choices carry `text`.
pub(super) fn completion(x: &Exchange<'_>) -> Outcome {
    call(x, Shape::Text)
}

fn call(x: &Exchange<'_>, shape: Shape) -> Outcome {
    let (operation, not_params) = match shape {
        Shape::Chat => ("chat", NOT_PARAMS),
        Shape::Text => ("completion", NOT_PARAMS_TEXT),
    };
    let mut llm = LlmInfo {
        provider: Some(x.provider("openai")),
        operation: Some(operation.to_string()),
        ..LlmInfo::default()
    };
    read_request(&x.request.value, not_params, &mut llm);
    llm.request_model = x.request_model();
    let mut outcome = Outcome::new(Kind::Llm, default_name(operation, &llm));
    match x.form(llm.stream) {
        Form::Sse => {
            let events = sse::parse(&x.response.bytes);
            let stream = reassemble(&events, shape, &mut llm);
            llm.stream = true;
            outcome.streamed = true;
            outcome.finished = stream.done;
            outcome.first_token_end = stream.first_token_end;
            outcome.body_error = stream.error;
            if let Some(note) = stream.skipped.note() {
                outcome.notes.push(note);
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
    if llm.usage_source.is_none() {
        outcome.estimate = Some(match shape {
            Shape::Chat => Estimate {
                input: chat_input_text(&x.request.value),
                output: chat_output_text(&outcome.output),
            },
            Shape::Text => {
                let mut input = Text::new();
                input.push_strings(x.request.value.get("prompt").unwrap_or(&Value::Null));
                let mut output = Text::new();
                let choices = outcome.output.get("choices").and_then(Value::as_array);
                for choice in choices.into_iter().flatten() {
                    push_content(choice.get("text"), &mut output);
                }
                Estimate { input, output }
            }
        });
    }
    outcome.llm = Some(llm);
    outcome
}

/// `<operation> <model>`, or the operation alone.
pub(super) fn default_name(operation: &str, llm: &LlmInfo) -> String {
    match &llm.request_model {
        Some(model) => format!("{operation} {model}"),
        None => operation.to_string(),
    }
}

/// Model, stream flag and every top-level key but `not_params`, as sent.
pub(super) fn read_request(body: &Value, not_params: &[&str], llm: &mut LlmInfo) {
    let Some(obj) = body.as_object() else {
        return;
    };
    llm.request_model = non_empty(obj.get("model"));
    llm.stream = obj.get("stream") == Some(&Value::Bool(true));
    llm.params = obj
        .iter()
        .filter(|(k, _)| !not_params.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
}

/// The prompt of a chat request as the model sees it, for counting: each message's text (and
/// the tool calls of assistant messages) plus the framing tokens, and the tool definitions.
fn chat_input_text(body: &Value) -> Text {
    let mut text = Text::new();
    let messages = body.get("messages").and_then(Value::as_array);
    for message in messages.into_iter().flatten() {
        text.add_tokens(TOKENS_PER_MESSAGE);
        push_content(message.get("content"), &mut text);
        if let Some(name) = message.get("name").and_then(Value::as_str) {
            text.push(name);
        }
        let calls = message.get("tool_calls").and_then(Value::as_array);
        for call in calls.into_iter().flatten() {
            if let Some(function) = call.get("function") {
                text.push_strings(function);
            }
        }
    }
    if messages.is_some() {
        text.add_tokens(REPLY_PRIMING_TOKENS);
    }
    for key in ["tools", "functions"] {
        if let Some(tools) = body.get(key).filter(|t| !t.is_null()) {
            text.push_json(tools);
        }
    }
    text
}

/// The generated text of a `chat.completion`: content, refusal, reasoning and tool calls of
/// every choice.
fn chat_output_text(output: &Value) -> Text {
    let mut text = Text::new();
    let choices = output.get("choices").and_then(Value::as_array);
    for choice in choices.into_iter().flatten() {
        let Some(message) = choice.get("message") else {
            continue;
        };
        for key in ["content", "refusal", "reasoning_content"] {
            push_content(message.get(key), &mut text);
        }
        let calls = message.get("tool_calls").and_then(Value::as_array);
        for call in calls.into_iter().flatten() {
            if let Some(function) = call.get("function") {
                text.push_strings(function);
            }
        }
        if let Some(function) = message.get("function_call") {
            text.push_strings(function);
        }
    }
    text
}

/// Adds the text of a message `content`: a string, or the `text` of each part of a parts array
/// (images and audio cannot be counted as text and are left out).
pub(super) fn push_content(content: Option<&Value>, text: &mut Text) {
    match content {
        Some(Value::String(s)) => text.push(s),
        Some(Value::Array(parts)) => {
            for part in parts {
                match part {
                    Value::String(s) => text.push(s),
                    _ => {
                        if let Some(s) = part.get("text").and_then(Value::as_str) {
                            text.push(s);
                        }
                    }
                }
            }
        }
        _ => {}
    }
}

/// A non-streamed `chat.completion` (or legacy `text_completion`).
pub(super) fn read_response(body: &Value, llm: &mut LlmInfo) {
    llm.response_model = non_empty(body.get("model"));
    if let Some(usage) = body.get("usage") {
        read_usage(usage, llm);
    }
    llm.finish_reason = body
        .get("choices")
        .and_then(|c| c.get(0))
        .and_then(|c| non_empty(c.get("finish_reason")));
}

/// OpenAI's `usage` block → token counts, marked "reported". Cached prompt tokens
/// (`prompt_tokens_details.cached_tokens`) and reasoning tokens
/// (`completion_tokens_details.reasoning_tokens`) are already inside the two totals.
pub(super) fn read_usage(usage: &Value, llm: &mut LlmInfo) {
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
    llm.cached_input_tokens = usage
        .pointer("/prompt_tokens_details/cached_tokens")
        .and_then(token_count)
        .filter(|n| *n > 0);
    llm.reasoning_tokens = usage
        .pointer("/completion_tokens_details/reasoning_tokens")
        .and_then(token_count)
        .filter(|n| *n > 0);
    llm.usage_source = Some("reported".to_string());
}

/// A token count: a non-negative integer (some servers send `12.0`).
pub(super) fn token_count(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| {
        let f = v.as_f64()?;
        (f.is_finite() && f >= 0.0 && f.fract() == 0.0 && f <= u64::MAX as f64).then_some(f as u64)
    })
}

pub(super) fn non_empty(v: Option<&Value>) -> Option<String> {
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
    skipped: Unparsed,
}

/// Stream events whose data could not be read (the bytes were still forwarded as they came).
#[derive(Debug, Default)]
pub(super) struct Unparsed {
    count: usize,
    /// The first one: where it ended in the body, and why it failed.
    first: Option<(u64, String)>,
}

impl Unparsed {
    pub fn record(&mut self, event: &sse::Event, why: String) {
        self.count += 1;
        self.first.get_or_insert((event.end, why));
    }

    /// The span note, when any event was skipped.
    pub fn note(&self) -> Option<String> {
        let (end, why) = self.first.as_ref()?;
        Some(format!(
            "skipped {} stream event(s) whose data was not JSON (the first, ending at byte {end}: {why})",
            self.count
        ))
    }
}

/// The JSON object an event carries; why not, when it carries none.
pub(super) fn event_object(data: &str) -> Result<Value, String> {
    match serde_json::from_str::<Value>(data) {
        Ok(v @ Value::Object(_)) => Ok(v),
        Ok(_) => Err("data is JSON but not an object".to_string()),
        Err(e) => Err(e.to_string()),
    }
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

/// Folds the chunks of a streamed completion, up to `data: [DONE]`.
fn reassemble(events: &[sse::Event], shape: Shape, llm: &mut LlmInfo) -> Stream {
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
        let chunk = match event_object(data) {
            Ok(chunk) => chunk,
            // A cut-off last event is the capture's or the client's doing, not bad data.
            Err(why) => {
                if event.complete {
                    stream.skipped.record(event, why);
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
        stream.output = Some(acc.into_completion(shape));
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

    fn into_completion(self, shape: Shape) -> Value {
        let object = match shape {
            Shape::Chat => "chat.completion",
            Shape::Text => "text_completion",
        };
        let mut out = Map::new();
        out.insert("id".into(), self.id.map_or(Value::Null, Value::String));
        out.insert("object".into(), Value::String(object.into()));
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
            .map(|(index, c)| match shape {
                Shape::Chat => c.into_choice(index),
                Shape::Text => c.into_text_choice(index),
            })
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
        // A legacy completion choice carries its text directly.
        if let Some(text) = choice.get("text").and_then(Value::as_str) {
            self.content.push_str(text);
            self.saw_content = true;
            return !text.is_empty();
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

    /// A legacy `text_completion` choice.
    fn into_text_choice(self, index: u64) -> Value {
        let mut choice = Map::new();
        choice.insert("index".into(), Value::from(index));
        choice.insert("text".into(), Value::String(self.content));
        choice.insert(
            "logprobs".into(),
            self.logprobs.map_or(Value::Null, Value::Object),
        );
        choice.insert(
            "finish_reason".into(),
            self.finish_reason.map_or(Value::Null, Value::String),
        );
        Value::Object(choice)
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

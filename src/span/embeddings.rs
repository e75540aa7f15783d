//! Embeddings (`…/embeddings`): a span of kind `embedding` with the model, the number of inputs,
//! the vectors' dimensions and the usage.
//!
//! The vectors themselves are large and rarely worth reading, so `output` keeps a summary unless
//! `capture_embeddings` is on: `{"object":"list","model","inputs","dimensions","encoding_format",
//! "data":[{"object":"embedding","index","dimensions"}…],"usage"}`. With it on, each `data` item
//! also keeps its `embedding`, as floats whatever the wire `encoding_format` was (the OpenAI SDKs
//! ask for `base64` by default; it is decoded here).

use base64::Engine;
use serde_json::{json, Map, Value};

use super::assemble::{Exchange, Form, Outcome};
use super::estimate::{Estimate, Text};
use super::openai::{default_name, non_empty, read_request, read_usage};
use super::{Kind, LlmInfo};

const NOT_PARAMS: &[&str] = &["model", "input"];

pub(super) fn embeddings(x: &Exchange<'_>) -> Outcome {
    let mut llm = LlmInfo {
        provider: Some(x.provider("openai")),
        operation: Some("embeddings".to_string()),
        ..LlmInfo::default()
    };
    read_request(&x.request.value, NOT_PARAMS, &mut llm);
    llm.request_model = x.request_model();
    let input = x.request.value.get("input").unwrap_or(&Value::Null);
    let inputs = count_inputs(input);
    let mut outcome = Outcome::new(Kind::Embedding, default_name("embeddings", &llm));
    match x.form(false) {
        Form::Json => {
            let body = &x.response.value;
            llm.response_model = non_empty(body.get("model"));
            if let Some(usage) = body.get("usage").filter(|u| u.is_object()) {
                read_usage(usage, &mut llm);
            }
            let format = x
                .request
                .value
                .get("encoding_format")
                .and_then(Value::as_str)
                .unwrap_or("float");
            outcome.output = summarize(body, inputs, format, x.capture_embeddings);
            outcome.finished = !x.response.truncated;
        }
        Form::Failed | Form::Sse | Form::Other => outcome.output = x.response.value.clone(),
    }
    if llm.usage_source.is_none() {
        let mut text = Text::new();
        push_inputs(input, &mut text);
        outcome.estimate = Some(Estimate {
            input: text,
            output: Text::new(),
        });
    }
    outcome.llm = Some(llm);
    outcome
}

/// How many texts were embedded: a string is one, an array of strings or of token arrays is
/// one per item, a single token array is one.
fn count_inputs(input: &Value) -> Option<usize> {
    match input {
        Value::String(_) => Some(1),
        Value::Array(items) if !items.is_empty() && items.iter().all(Value::is_number) => Some(1),
        Value::Array(items) => Some(items.len()),
        _ => None,
    }
}

/// Strings are counted by the tokenizer; token-ID arrays count one token per ID.
fn push_inputs(input: &Value, text: &mut Text) {
    match input {
        Value::String(s) => text.push(s),
        Value::Array(items) if items.iter().all(Value::is_number) => {
            text.add_tokens(items.len() as u64)
        }
        Value::Array(items) => {
            for item in items {
                push_inputs(item, text);
            }
        }
        _ => {}
    }
}

/// The response with each vector replaced by its length (or decoded to floats, when kept).
fn summarize(body: &Value, inputs: Option<usize>, format: &str, keep: bool) -> Value {
    let Some(obj) = body.as_object() else {
        return body.clone();
    };
    let mut dimensions = None;
    let data: Vec<Value> = obj
        .get("data")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|item| {
            let Some(item) = item.as_object() else {
                return item.clone();
            };
            let vector = item.get("embedding");
            let dims = vector.and_then(dimensions_of);
            dimensions = dimensions.or(dims);
            let mut kept: Map<String, Value> = item
                .iter()
                .filter(|(k, _)| k.as_str() != "embedding")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            kept.insert("dimensions".into(), dims.map_or(Value::Null, Value::from));
            if keep {
                if let Some(vector) = vector {
                    kept.insert("embedding".into(), as_floats(vector));
                }
            }
            Value::Object(kept)
        })
        .collect();
    let mut out = Map::new();
    out.insert(
        "object".into(),
        obj.get("object").cloned().unwrap_or(json!("list")),
    );
    out.insert(
        "model".into(),
        obj.get("model").cloned().unwrap_or(Value::Null),
    );
    out.insert(
        "inputs".into(),
        inputs.or((!data.is_empty()).then_some(data.len())).into(),
    );
    out.insert("dimensions".into(), dimensions.into());
    out.insert("encoding_format".into(), format.into());
    out.insert("embeddings_kept".into(), keep.into());
    out.insert("data".into(), Value::Array(data));
    for (key, value) in obj {
        if !matches!(key.as_str(), "object" | "model" | "data") {
            out.entry(key.clone()).or_insert_with(|| value.clone());
        }
    }
    Value::Object(out)
}

/// Length of a float array, or of a base64 string of little-endian f32s.
fn dimensions_of(vector: &Value) -> Option<usize> {
    match vector {
        Value::Array(items) => Some(items.len()),
        Value::String(b64) => {
            let b64 = b64.trim();
            let padding = b64.bytes().rev().take_while(|b| *b == b'=').count();
            Some((b64.len() * 3 / 4).saturating_sub(padding) / 4)
        }
        _ => None,
    }
}

/// A vector as a float array; a base64 one is decoded (an undecodable one is kept as sent).
fn as_floats(vector: &Value) -> Value {
    let Value::String(b64) = vector else {
        return vector.clone();
    };
    match base64::engine::general_purpose::STANDARD.decode(b64.trim()) {
        Ok(bytes) if bytes.len() % 4 == 0 => Value::Array(
            bytes
                .chunks_exact(4)
                .map(|c| {
                    let f = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                    serde_json::Number::from_f64(f64::from(f)).map_or(Value::Null, Value::Number)
                })
                .collect(),
        ),
        _ => vector.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_are_counted_by_shape() {
        for (input, want) in [
            (json!("one"), Some(1)),
            (json!(["a", "b", "c"]), Some(3)),
            (json!([1, 2, 3]), Some(1)),
            (json!([[1, 2], [3]]), Some(2)),
            (json!([]), Some(0)),
            (json!(null), None),
        ] {
            assert_eq!(count_inputs(&input), want, "{input} is {want:?} input(s)");
        }
    }

    #[test]
    fn base64_vectors_are_measured_and_decoded() {
        let floats = [0.5f32, -1.0, 2.25];
        let bytes: Vec<u8> = floats.iter().flat_map(|f| f.to_le_bytes()).collect();
        let b64 = base64::engine::general_purpose::STANDARD.encode(&bytes);
        assert_eq!(dimensions_of(&json!(b64)), Some(3), "12 bytes are 3 floats");
        assert_eq!(as_floats(&json!(b64)), json!([0.5, -1.0, 2.25]));
        assert_eq!(
            as_floats(&json!("not base64!")),
            json!("not base64!"),
            "an undecodable vector is kept as sent"
        );
        assert_eq!(dimensions_of(&json!([0.1, 0.2])), Some(2));
    }
}

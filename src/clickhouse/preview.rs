//! The summary's per-span values (previews, error message, picodollars), computed exactly as
//! the sled store computes them so both backends give the same summaries.
//!
//! Copied from `store.rs` (which another change is splitting into `store/` right now); once that
//! lands, both should share one module instead of two copies.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::span::Span;
use crate::store::MAX_SUMMARY_VALUES;

/// Length of `input_preview` / `output_preview`, in chars.
const PREVIEW_CHARS: usize = 200;

pub fn error_message(span: &Span) -> String {
    match &span.error {
        Some(e) if !e.message.is_empty() => e.message.clone(),
        Some(e) if !e.kind.is_empty() => e.kind.clone(),
        _ => format!("{} failed", span.name),
    }
}

/// Costs are summed as integer picodollars so the sum does not depend on the order of addition.
/// Negative or non-finite costs count as unknown.
pub fn to_pico(usd: f64) -> Option<u64> {
    (usd.is_finite() && usd >= 0.0).then(|| (usd * 1e12).round() as u64)
}

pub fn from_pico(pico: u64) -> f64 {
    pico as f64 / 1e12
}

// === previews ===

/// The text a user would call "the input": a chat request's last user message, a prompt or input
/// string, else compact JSON.
pub fn input_preview(v: &Value) -> Option<String> {
    let text = match v {
        Value::Null => return None,
        Value::String(s) => s.clone(),
        Value::Object(o) => {
            let from_messages = |msgs: &Vec<Value>| {
                let user = msgs
                    .iter()
                    .rev()
                    .find(|m| m.get("role").and_then(Value::as_str) == Some("user"));
                user.or_else(|| msgs.last())
                    .and_then(|m| m.get("content"))
                    .and_then(content_text)
            };
            let found = match (o.get("messages"), o.get("input"), o.get("prompt")) {
                (Some(Value::Array(msgs)), _, _) => from_messages(msgs),
                (_, Some(Value::String(s)), _) => Some(s.clone()),
                (_, Some(Value::Array(items)), _)
                    if items.iter().any(|i| i.get("role").is_some()) =>
                {
                    from_messages(items)
                }
                // Embeddings: a batch of strings.
                (_, Some(Value::Array(items)), _)
                    if !items.is_empty() && items.iter().all(Value::is_string) =>
                {
                    Some(
                        items
                            .iter()
                            .filter_map(Value::as_str)
                            .collect::<Vec<_>>()
                            .join(" · "),
                    )
                }
                (_, _, Some(Value::String(s))) => Some(s.clone()),
                _ => None,
            };
            found.unwrap_or_else(|| compact_json(v))
        }
        _ => compact_json(v),
    };
    clip(&text)
}

/// The text a user would call "the answer": a chat completion's first choice, a completion's
/// text, an Anthropic message's or a Responses output's text blocks, a string, else compact JSON.
pub fn output_preview(v: &Value) -> Option<String> {
    let text = match v {
        Value::Null => return None,
        Value::String(s) => s.clone(),
        Value::Object(o) => {
            let choice = o.get("choices").and_then(|c| c.get(0));
            let message = choice.and_then(|c| c.get("message"));
            let found = message
                .and_then(|m| m.get("content"))
                .and_then(content_text)
                .or_else(|| message.and_then(|m| m.get("tool_calls")).map(compact_json))
                .or_else(|| {
                    choice
                        .and_then(|c| c.get("text"))
                        .and_then(Value::as_str)
                        .map(str::to_string)
                })
                .or_else(|| o.get("content").and_then(content_text))
                .or_else(|| {
                    o.get("output_text")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                })
                .or_else(|| {
                    let items = o.get("output")?.as_array()?;
                    let parts: Vec<String> = items
                        .iter()
                        .filter_map(|i| i.get("content").and_then(content_text))
                        .collect();
                    (!parts.is_empty()).then(|| parts.join(" "))
                })
                .or_else(|| {
                    // Embeddings: say what came back instead of printing vectors.
                    let data = o.get("data")?.as_array()?;
                    let first = data.first()?.get("embedding")?;
                    let dims = first
                        .as_array()
                        .map(|a| format!(" of {} dimensions", a.len()))
                        .unwrap_or_default();
                    let n = data.len();
                    Some(format!(
                        "{n} embedding{}{dims}",
                        if n == 1 { "" } else { "s" }
                    ))
                });
            found.unwrap_or_else(|| compact_json(v))
        }
        _ => compact_json(v),
    };
    clip(&text)
}

/// Message content: a string, or the text of an array of content parts.
fn content_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Array(parts) => {
            let texts: Vec<&str> = parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect();
            (!texts.is_empty()).then(|| texts.join(" "))
        }
        _ => None,
    }
}

/// Compact JSON, but at most a few KB of it (a captured body can be megabytes).
fn compact_json(v: &Value) -> String {
    struct Capped(Vec<u8>);
    impl std::io::Write for Capped {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let room = (PREVIEW_CHARS * 8).saturating_sub(self.0.len());
            if room == 0 {
                return Err(std::io::Error::other("preview is long enough"));
            }
            let n = buf.len().min(room);
            self.0.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut out = Capped(Vec::new());
    let _ = serde_json::to_writer(&mut out, v); // stops early, on purpose, when the cap is hit
    String::from_utf8_lossy(&out.0).into_owned()
}

/// One line of at most `PREVIEW_CHARS` chars (whitespace runs collapsed, `…` when cut).
fn clip(text: &str) -> Option<String> {
    let mut out = String::new();
    let mut chars = 0;
    for word in text.split_whitespace() {
        for c in (!out.is_empty())
            .then_some(' ')
            .into_iter()
            .chain(word.chars())
        {
            if chars == PREVIEW_CHARS {
                out.pop();
                out.push('…');
                return Some(out);
            }
            out.push(c);
            chars += 1;
        }
    }
    (!out.is_empty()).then_some(out)
}

/// Adds `value`, keeping only the [`MAX_SUMMARY_VALUES`] smallest (order-independent).
pub fn insert_capped(set: &mut BTreeSet<String>, value: &str) {
    if set.len() >= MAX_SUMMARY_VALUES && set.last().is_some_and(|last| value >= last.as_str()) {
        return;
    }
    set.insert(value.to_string());
    while set.len() > MAX_SUMMARY_VALUES {
        set.pop_last();
    }
}

//! Input and output previews: the short text a user would call "the input" and "the answer".

use super::*;

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
pub(super) fn content_text(v: &Value) -> Option<String> {
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
pub(super) fn compact_json(v: &Value) -> String {
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
pub(super) fn clip(text: &str) -> Option<String> {
    let mut out = String::with_capacity(text.len().min(PREVIEW_CHARS) + 4);
    let mut chars = 0;
    for word in text.split_whitespace() {
        // Fast path: an ASCII word that fits whole (chars are bytes); the same result as the
        // char-by-char loop below, which also handles the cut.
        let sep = usize::from(!out.is_empty());
        if word.is_ascii() && chars + sep + word.len() <= PREVIEW_CHARS {
            if sep == 1 {
                out.push(' ');
            }
            out.push_str(word);
            chars += sep + word.len();
            continue;
        }
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

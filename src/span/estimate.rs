//! Token estimation for calls whose upstream reported no usage (streams without
//! `stream_options.include_usage`, servers that omit `usage`).
//!
//! Counts as tiktoken does, with OpenAI's BPE tables compiled into the binary (no download, works
//! offline) and held compactly ([`super::bpe`]): `o200k_base` for the GPT-4o / GPT-4.1 / GPT-4.5 /
//! GPT-5 / o-series families, `cl100k_base` for everything else. Claude and other non-OpenAI models use `cl100k_base` too:
//! an approximation (their tokenizers are not public), typically within ~10–20 % for English.
//!
//! Runs only on the writer thread, during span assembly — never on the request path. Bounded:
//! at most [`MAX_COUNTED_BYTES`] of text are tokenized per call; anything beyond is extrapolated
//! from the counted part's bytes-per-token. Each BPE table is built once and kept in a
//! `OnceLock`.

use std::sync::OnceLock;

use serde_json::Value;

use super::bpe::{self, Bpe};

/// Text tokenized exactly per call (input and output each); the rest is extrapolated.
pub const MAX_COUNTED_BYTES: usize = 1 << 20;

/// Chat framing: each message costs a few tokens besides its content (OpenAI's published
/// counting recipe: 3 per message, 3 to prime the reply).
pub const TOKENS_PER_MESSAGE: u64 = 3;
pub const REPLY_PRIMING_TOKENS: u64 = 3;

/// Which BPE a model is counted with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    O200k,
    Cl100k,
}

impl Encoding {
    /// The encoding for a model name (`None` or unknown → `cl100k_base`).
    pub fn for_model(model: Option<&str>) -> Encoding {
        let Some(model) = model else {
            return Encoding::Cl100k;
        };
        let model = model.trim().to_ascii_lowercase();
        // `azure/gpt-4o`, `openai/gpt-4o`, `ft:gpt-4o-mini:org::id`
        let bare = model.rsplit('/').next().unwrap_or(&model);
        let bare = bare.strip_prefix("ft:").unwrap_or(bare);
        const O200K: &[&str] = &[
            "gpt-4o",
            "gpt-4.1",
            "gpt-4.5",
            "gpt-5",
            "gpt-oss",
            "chatgpt-4o",
            "o1",
            "o3",
            "o4",
            "codex-",
        ];
        let o_series = |p: &str| {
            // `o1`, `o3-mini`, `o4-mini-2025-04-16`, but not `omni-…`
            bare == p || bare.starts_with(&format!("{p}-"))
        };
        let is_o200k = O200K.iter().any(|p| {
            if p.len() == 2 {
                o_series(p)
            } else {
                bare.starts_with(p)
            }
        });
        if is_o200k {
            Encoding::O200k
        } else {
            Encoding::Cl100k
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Encoding::O200k => "o200k_base",
            Encoding::Cl100k => "cl100k_base",
        }
    }

    /// The BPE, built on first use. `None` only if the embedded tables failed to load.
    fn bpe(self) -> Option<&'static Bpe> {
        static O200K: OnceLock<Option<Bpe>> = OnceLock::new();
        static CL100K: OnceLock<Option<Bpe>> = OnceLock::new();
        let (cell, ranks, pattern) = match self {
            Encoding::O200k => (&O200K, bpe::O200K_RANKS, bpe::O200K_PATTERN),
            Encoding::Cl100k => (&CL100K, bpe::CL100K_RANKS, bpe::CL100K_PATTERN),
        };
        cell.get_or_init(|| match Bpe::load(ranks, pattern) {
            Ok(bpe) => Some(bpe),
            Err(e) => {
                tracing::error!(encoding = self.name(), error = %e, "token estimation unavailable");
                None
            }
        })
        .as_ref()
    }
}

/// Text gathered for counting, capped at [`MAX_COUNTED_BYTES`]; what did not fit is measured,
/// not kept.
#[derive(Debug, Default)]
pub struct Text {
    buf: String,
    /// Bytes seen beyond the cap.
    dropped: usize,
    /// Tokens known without tokenizing (token-ID arrays, chat framing).
    extra_tokens: u64,
}

impl Text {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a piece of text (separated from the previous one by a newline).
    pub fn push(&mut self, s: &str) {
        if s.is_empty() {
            return;
        }
        let separator = usize::from(!self.buf.is_empty());
        let room = MAX_COUNTED_BYTES.saturating_sub(self.buf.len() + separator);
        if room == 0 {
            self.dropped = self.dropped.saturating_add(s.len());
            return;
        }
        if separator == 1 {
            self.buf.push('\n');
        }
        if s.len() <= room {
            self.buf.push_str(s);
        } else {
            let mut cut = room;
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            self.buf.push_str(&s[..cut]);
            self.dropped = self.dropped.saturating_add(s.len() - cut);
        }
    }

    /// Adds tokens that need no tokenizing.
    pub fn add_tokens(&mut self, n: u64) {
        self.extra_tokens = self.extra_tokens.saturating_add(n);
    }

    /// Adds a JSON value as its compact text (tool schemas, tool-call arguments).
    pub fn push_json(&mut self, v: &Value) {
        match v {
            Value::Null => {}
            Value::String(s) => self.push(s),
            other => self.push(&other.to_string()),
        }
    }

    /// Adds every string found in `v` (object keys excluded), depth-first, bounded in depth.
    pub fn push_strings(&mut self, v: &Value) {
        fn walk(t: &mut Text, v: &Value, depth: usize) {
            if depth > 64 {
                return;
            }
            match v {
                Value::String(s) => t.push(s),
                Value::Array(items) => items.iter().for_each(|i| walk(t, i, depth + 1)),
                Value::Object(map) => map.values().for_each(|i| walk(t, i, depth + 1)),
                _ => {}
            }
        }
        walk(self, v, 0);
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty() && self.dropped == 0 && self.extra_tokens == 0
    }

    /// Tokens in the gathered text under `encoding`; `None` if the tokenizer is unavailable.
    pub fn count(&self, encoding: Encoding) -> Option<u64> {
        let counted = if self.buf.is_empty() {
            0
        } else {
            let bpe = encoding.bpe()?;
            chunks(&self.buf).map(|chunk| bpe.count(chunk) as u64).sum()
        };
        let extrapolated = if self.dropped > 0 && !self.buf.is_empty() {
            // Same bytes-per-token as the part we counted.
            let per_byte = counted as f64 / self.buf.len() as f64;
            (self.dropped as f64 * per_byte).ceil() as u64
        } else {
            // Nothing counted to learn from: ~4 bytes per token.
            (self.dropped as u64).div_ceil(4)
        };
        Some(
            counted
                .saturating_add(extrapolated)
                .saturating_add(self.extra_tokens),
        )
    }
}

/// Longest piece handed to the tokenizer at once. Text is cut before a whitespace run where it
/// can be (where the tokenizer's own pre-split would cut too, so counts do not change); a run
/// with no whitespace is cut hard. Without this, one long run of letters is a single BPE piece
/// and costs seconds per MiB.
const CHUNK_BYTES: usize = 4096;

/// `text` in pieces of at most [`CHUNK_BYTES`] (a little more only to reach a char boundary).
fn chunks(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        if rest.len() <= CHUNK_BYTES {
            return Some(std::mem::take(&mut rest));
        }
        let mut limit = CHUNK_BYTES;
        while !rest.is_char_boundary(limit) {
            limit += 1;
        }
        let window = &rest[..limit];
        // Cut before the whitespace run that follows the last non-whitespace char.
        let cut = window
            .char_indices()
            .rev()
            .find(|(i, c)| {
                c.is_whitespace()
                    && *i > 0
                    && window[..*i]
                        .chars()
                        .next_back()
                        .is_some_and(|p| !p.is_whitespace())
            })
            .map_or(limit, |(i, _)| i);
        let (head, tail) = rest.split_at(cut);
        rest = tail;
        Some(head)
    })
}

/// What a call's input and output are made of, for counting.
#[derive(Debug, Default)]
pub struct Estimate {
    pub input: Text,
    pub output: Text,
}

/// The token counts of an estimate: (input, output).
pub fn count(estimate: &Estimate, encoding: Encoding) -> Option<(u64, u64)> {
    Some((
        estimate.input.count(encoding)?,
        estimate.output.count(encoding)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn models_pick_their_encoding() {
        for (model, want) in [
            (Some("gpt-4o-mini"), Encoding::O200k),
            (Some("gpt-4o-2024-08-06"), Encoding::O200k),
            (Some("gpt-4.1-nano"), Encoding::O200k),
            (Some("gpt-5"), Encoding::O200k),
            (Some("GPT-5-mini"), Encoding::O200k),
            (Some("o1"), Encoding::O200k),
            (Some("o3-mini"), Encoding::O200k),
            (Some("o4-mini-2025-04-16"), Encoding::O200k),
            (Some("openai/gpt-4o"), Encoding::O200k),
            (Some("ft:gpt-4o-mini:acme::abc"), Encoding::O200k),
            (Some("gpt-4"), Encoding::Cl100k),
            (Some("gpt-3.5-turbo"), Encoding::Cl100k),
            (Some("text-embedding-3-small"), Encoding::Cl100k),
            (Some("claude-sonnet-4-5"), Encoding::Cl100k),
            (Some("omni-moderation-latest"), Encoding::Cl100k),
            (Some("o1x"), Encoding::Cl100k),
            (None, Encoding::Cl100k),
        ] {
            assert_eq!(
                Encoding::for_model(model),
                want,
                "{model:?} is counted with {}",
                want.name()
            );
        }
    }

    #[test]
    fn known_strings_count_exactly() {
        let mut t = Text::new();
        t.push("hello world");
        assert_eq!(
            t.count(Encoding::O200k),
            Some(2),
            "o200k_base: \"hello world\" is 2 tokens"
        );
        assert_eq!(
            t.count(Encoding::Cl100k),
            Some(2),
            "cl100k_base: \"hello world\" is 2 tokens"
        );
        let mut t = Text::new();
        t.push("tiktoken is great!");
        assert_eq!(
            t.count(Encoding::Cl100k),
            Some(6),
            "the cookbook's example is 6 cl100k tokens"
        );
        let mut t = Text::new();
        t.add_tokens(7);
        assert_eq!(t.count(Encoding::O200k), Some(7), "extra tokens are added");
        assert_eq!(Text::new().count(Encoding::O200k), Some(0));
        assert!(Text::new().is_empty());
    }

    #[test]
    fn chunking_keeps_every_byte_and_the_count() {
        let prose = "The quick brown fox jumps over the lazy dog.  ".repeat(500);
        let pieces: Vec<&str> = chunks(&prose).collect();
        assert!(pieces.len() > 1, "long text is cut");
        assert_eq!(pieces.concat(), prose, "the pieces are the whole text");
        assert!(
            pieces.iter().all(|p| p.len() <= CHUNK_BYTES),
            "no piece is longer than the chunk size"
        );
        assert!(
            pieces[1..].iter().all(|p| p.starts_with(' ')),
            "prose is cut before a space, where the tokenizer splits anyway"
        );
        let bpe = tiktoken_rs::o200k_base().unwrap();
        let mut t = Text::new();
        t.push(&prose);
        assert_eq!(
            t.count(Encoding::O200k),
            Some(bpe.encode_ordinary(&prose).len() as u64),
            "cutting at whitespace does not change the count of ordinary prose"
        );
        let wide = "é".repeat(5000);
        let pieces: Vec<&str> = chunks(&wide).collect();
        assert_eq!(
            pieces.concat(),
            wide,
            "multi-byte text is cut on char boundaries"
        );
    }

    #[test]
    fn strings_are_gathered_from_json() {
        let mut t = Text::new();
        t.push_strings(&json!({"a": ["x", {"b": "y"}], "n": 1, "k": null}));
        assert_eq!(t.buf, "x\ny", "every string value, keys excluded");
        let mut t = Text::new();
        t.push_json(&json!({"q": 1}));
        t.push_json(&json!("raw"));
        assert_eq!(t.buf, "{\"q\":1}\nraw");
    }

    #[test]
    fn text_past_the_cap_is_extrapolated_not_tokenized() {
        let word = "tracing ";
        let mut t = Text::new();
        let big = word.repeat(MAX_COUNTED_BYTES / word.len() + 1000);
        t.push(&big);
        t.push(&big);
        assert_eq!(
            t.buf.len(),
            MAX_COUNTED_BYTES,
            "the kept text stops at the cap"
        );
        let n = t.count(Encoding::Cl100k).unwrap();
        let words = 2 * (MAX_COUNTED_BYTES / word.len() + 1000) as u64;
        assert!(
            n >= words * 9 / 10 && n <= words * 11 / 10,
            "the extrapolated count ({n}) stays near one token per word ({words})"
        );
    }

    #[test]
    fn a_cut_never_splits_a_character() {
        let mut t = Text::new();
        t.push(&"a".repeat(MAX_COUNTED_BYTES - 1));
        t.push("é"); // the newline takes the last byte of room
        t.push("ü");
        assert!(t.buf.len() <= MAX_COUNTED_BYTES);
        assert!(t.dropped > 0, "what did not fit is measured");
    }
}

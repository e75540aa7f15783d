//! Full-text search (`q=`): what a term is, which text of a span is indexed, and the terms of a
//! query. Postings are ordinary index keys (`w` term 0x00 inv(trace start) trace_id, see `keys`),
//! written with the trace's other index keys in the same batch, so `delete_trace`, retention and
//! `check` treat them like every other index entry.
//!
//! A term is a maximal run of Unicode letters and digits, lowercased, cut to its first
//! [`MAX_TERM_CHARS`] chars; [`STOP_WORDS`] are not terms. A span contributes the terms of its name, model, session, user,
//! tags, error message, and the string values of its input and its output (except under the keys
//! `role`, `type`, `model`, `object`; at most
//! [`MAX_TEXT_BYTES`] of each; arrays are read last item first, so the newest chat message
//! counts before the system prompt). A trace keeps at most [`MAX_TRACE_TERMS`] terms (the
//! lexicographically smallest, so the set does not depend on arrival order) plus its trace id.

use std::hash::{BuildHasherDefault, Hasher};

use super::*;

/// Longer runs of letters and digits are indexed (and searched) by their first 32 chars.
pub const MAX_TERM_CHARS: usize = 32;
/// Bytes of string values read from each of a span's input and output.
pub(super) const MAX_TEXT_BYTES: usize = 2048;
/// Terms kept per trace.
pub(super) const MAX_TRACE_TERMS: usize = 256;
/// Terms of a query that are used (the first ones); the others are ignored.
pub const MAX_QUERY_TERMS: usize = 8;

/// Very common English words: in nearly every trace, so a posting for them costs a write per
/// trace and narrows no search. Skipped when indexing and in queries alike.
const STOP_WORDS: [&str; 40] = [
    "about", "an", "and", "are", "as", "at", "be", "but", "by", "can", "do", "for", "from", "has",
    "have", "how", "if", "in", "is", "it", "its", "me", "my", "no", "not", "of", "on", "or", "our",
    "so", "that", "the", "this", "to", "was", "we", "what", "with", "you", "your",
];

/// Whether `term` is one of [`STOP_WORDS`]: by length first, so most terms cost one comparison
/// of lengths (this runs for every word of every indexed text).
fn is_stop_word(term: &str) -> bool {
    matches!(term.len(), 2..=5)
        && STOP_WORDS
            .iter()
            .any(|w| w.len() == term.len() && *w == term)
}

/// Calls `f` with each term of `text`, in order (with repeats); stop words are not terms.
pub(super) fn each_term(text: &str, mut f: impl FnMut(&str)) {
    let mut term = String::new();
    let mut chars = 0usize;
    let mut emit = |term: &mut String, chars: &mut usize| {
        if !is_stop_word(term) {
            f(term);
        }
        term.clear();
        *chars = 0;
    };
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        // ASCII fast path: one byte, no char decoding.
        if b.is_ascii() {
            i += 1;
            if b.is_ascii_alphanumeric() {
                if chars < MAX_TERM_CHARS {
                    term.push(char::from(b.to_ascii_lowercase()));
                }
                chars += 1;
            } else if chars > 0 {
                emit(&mut term, &mut chars);
            }
            continue;
        }
        let Some(c) = text.get(i..).and_then(|rest| rest.chars().next()) else {
            break;
        };
        i += c.len_utf8();
        if c.is_alphanumeric() {
            if chars < MAX_TERM_CHARS {
                term.extend(c.to_lowercase());
            }
            chars += 1;
        } else if chars > 0 {
            emit(&mut term, &mut chars);
        }
    }
    if chars > 0 {
        emit(&mut term, &mut chars);
    }
}

/// The distinct terms of a query, in the order they first appear, at most [`MAX_QUERY_TERMS`].
pub fn query_terms(q: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    each_term(q, |t| {
        if out.len() < MAX_QUERY_TERMS && !out.iter().any(|o| o == t) {
            out.push(t.to_string());
        }
    });
    out
}

/// A trace's terms. FNV-1a instead of SipHash: every word of every indexed text is looked up,
/// and SipHash was most of that cost. Hash flooding is not a concern here: a set holds one
/// trace's terms (at most [`MAX_TRACE_TERMS`] plus one span's, from at most 2 × [`MAX_TEXT_BYTES`]
/// of text), so the worst case is bounded and small.
pub(super) type TermSet = HashSet<String, BuildHasherDefault<Fnv1a>>;

#[derive(Default)]
pub(super) struct Fnv1a(u64);

impl Hasher for Fnv1a {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut h = if self.0 == 0 {
            0xcbf2_9ce4_8422_2325
        } else {
            self.0
        };
        for &b in bytes {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        self.0 = h;
    }
}

/// Adds the terms of one span to a trace's term set, then keeps the [`MAX_TRACE_TERMS`]
/// smallest (so the set is the same whatever order the spans arrived in).
pub(super) fn add_span_terms(span: &Span, terms: &mut TermSet) {
    add_span_terms_uncapped(span, terms);
    if terms.len() > MAX_TRACE_TERMS {
        let mut all: Vec<String> = terms.drain().collect();
        all.sort_unstable();
        all.truncate(MAX_TRACE_TERMS);
        terms.extend(all);
    }
}

fn add_span_terms_uncapped(span: &Span, terms: &mut TermSet) {
    let mut add = |text: &str| {
        each_term(text, |t| {
            if !terms.contains(t) {
                terms.insert(t.to_string());
            }
        })
    };
    add(&span.name);
    if let Some(m) = span.model() {
        add(m);
    }
    for s in [&span.session_id, &span.user_id].into_iter().flatten() {
        add(s);
    }
    for tag in &span.tags {
        add(tag);
    }
    if let Some(e) = &span.error {
        add(&e.kind);
        add(&e.message);
    }
    for body in [&span.input, &span.output] {
        let mut budget = MAX_TEXT_BYTES;
        each_string(body, &mut budget, &mut add);
    }
}

/// The string values of `v` (not object keys), arrays last item first, until `budget` bytes.
fn each_string(v: &Value, budget: &mut usize, f: &mut impl FnMut(&str)) {
    if *budget == 0 {
        return;
    }
    match v {
        Value::String(s) => {
            let mut end = s.len().min(*budget);
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            *budget -= end.max(1).min(*budget);
            f(&s[..end]);
        }
        Value::Array(items) => {
            for item in items.iter().rev() {
                each_string(item, budget, f);
            }
        }
        Value::Object(map) => {
            for (key, item) in map {
                // Wire-format enums ("role": "user", "type": "text") and the model (indexed from
                // the span) say nothing a search is for.
                if !matches!(key.as_str(), "role" | "type" | "model" | "object") {
                    each_string(item, budget, f);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn terms(text: &str) -> Vec<String> {
        let mut out = Vec::new();
        each_term(text, |t| out.push(t.to_string()));
        out
    }

    #[test]
    fn terms_are_lowercased_runs_of_letters_and_digits() {
        assert_eq!(
            terms("Hello, WORLD-42 ünïcode_xy"),
            ["hello", "world", "42", "ünïcode", "xy"]
        );
        assert_eq!(
            terms("Is the invoice a 3 or 42?"),
            ["invoice", "a", "3", "42"],
            "stop words are not terms"
        );
        assert!(
            STOP_WORDS.iter().all(|w| (2..=5).contains(&w.len())),
            "is_stop_word only looks at terms of 2 to 5 bytes"
        );
        assert_eq!(terms("  ...  "), Vec::<String>::new());
        let long = "a".repeat(100);
        assert_eq!(
            terms(&long),
            ["a".repeat(MAX_TERM_CHARS)],
            "long runs are cut to 32 chars"
        );
    }

    #[test]
    fn a_query_keeps_its_first_distinct_terms() {
        assert_eq!(
            query_terms("Invoice invoice PENDING"),
            ["invoice", "pending"]
        );
        let many = (0..20)
            .map(|i| format!("w{i}"))
            .collect::<Vec<_>>()
            .join(" ");
        assert_eq!(query_terms(&many).len(), MAX_QUERY_TERMS);
        assert!(query_terms(" - ").is_empty(), "punctuation has no terms");
    }

    #[test]
    fn string_values_are_read_newest_message_first_within_a_budget() {
        let v = serde_json::json!({"messages": [
            {"role": "system", "content": "alpha"},
            {"role": "user", "content": "omega"}
        ]});
        let mut seen = Vec::new();
        let mut budget = 9;
        each_string(&v, &mut budget, &mut |s: &str| seen.push(s.to_string()));
        assert!(
            seen.contains(&"omega".to_string()),
            "the last message is read first: {seen:?}"
        );
        assert!(
            !seen.contains(&"alpha".to_string()),
            "the budget ran out before the first one"
        );
        assert!(
            seen.iter().map(String::len).sum::<usize>() <= 9,
            "the budget bounds the text"
        );
    }
}

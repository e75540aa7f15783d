//! Full-text search (`q=`): what a term is, which text of a span is indexed, and the terms of a
//! query. A term's postings (inv(trace start) trace_id positions) are stored in blocks under
//! `w` term 0x00 (see `postings`), reached through the posting journal (see `journal`), whose
//! record is written in the same batch as the trace's other index keys, so `delete_trace`,
//! retention and `check` keep them in step like every other index entry.
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

/// A word of up to 7 bytes packed into a `u64` (its bytes, then its length in the top byte), so
/// the stop-word test compares integers instead of calling `memcmp` per candidate.
const fn pack(word: &[u8]) -> u64 {
    let mut v = (word.len() as u64) << 56;
    let mut i = 0;
    while i < word.len() && i < 7 {
        v |= (word[i] as u64) << (8 * i);
        i += 1;
    }
    v
}

const STOP_KEYS: [u64; STOP_WORDS.len()] = {
    let mut out = [0u64; STOP_WORDS.len()];
    let mut i = 0;
    while i < STOP_WORDS.len() {
        out[i] = pack(STOP_WORDS[i].as_bytes());
        i += 1;
    }
    out
};

/// Whether `term` is one of [`STOP_WORDS`]: by length first, so most terms cost one comparison
/// of lengths (this runs for every word of every indexed text), then 40 integer comparisons.
fn is_stop_word(term: &str) -> bool {
    matches!(term.len(), 2..=5) && STOP_KEYS.contains(&pack(term.as_bytes()))
}

/// Calls `f` with each term of `text`, in order (with repeats); stop words are not terms.
/// A run of ASCII letters and digits (most text) is passed as a slice of `text` when it has no
/// capitals, so most terms cost no copy; runs with other characters go char by char.
pub(super) fn each_term(text: &str, mut f: impl FnMut(&str)) {
    let mut emit = |term: &str| {
        if !is_stop_word(term) {
            f(term);
        }
    };
    let mut buf = String::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b.is_ascii() && !b.is_ascii_alphanumeric() {
            i += 1;
            continue;
        }
        let start = i;
        let mut j = i;
        let mut upper = false;
        while let Some(&c) = bytes.get(j).filter(|c| c.is_ascii_alphanumeric()) {
            upper |= c.is_ascii_uppercase();
            j += 1;
        }
        if j > start && bytes.get(j).is_none_or(u8::is_ascii) {
            // All ASCII: chars are bytes.
            let term = &text[start..start + (j - start).min(MAX_TERM_CHARS)];
            if upper {
                buf.clear();
                buf.push_str(term);
                buf.make_ascii_lowercase();
                emit(&buf);
            } else {
                emit(term);
            }
            i = j;
            continue;
        }
        // A run with other characters (or one that is not a letter or digit): char by char.
        buf.clear();
        let mut chars = 0usize;
        let mut k = start;
        while let Some(c) = text.get(k..).and_then(|rest| rest.chars().next()) {
            if !c.is_alphanumeric() {
                if chars == 0 {
                    k += c.len_utf8(); // skip it
                }
                break;
            }
            if chars < MAX_TERM_CHARS {
                buf.extend(c.to_lowercase());
            }
            chars += 1;
            k += c.len_utf8();
        }
        if chars > 0 {
            emit(&buf);
        }
        // Always moves on (a char boundary that decodes nothing would end the text).
        i = if k > start { k } else { bytes.len() };
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

/// A map keyed by short ids (the writer's span-id overlay): FNV-1a instead of SipHash, for the
/// same reason as [`TermSet`]; its keys come from one write batch.
pub(super) type FnvMap<K, V> = HashMap<K, V, BuildHasherDefault<Fnv1a>>;

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

/// The texts a trace's summary has already tokenized (see `Agg::seen_texts`). Transient: two
/// summaries are equal whatever their caches hold.
#[derive(Debug, Clone, Default)]
pub(super) struct SeenTexts(HashSet<Box<str>, BuildHasherDefault<Fnv1a>>);

impl PartialEq for SeenTexts {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// Texts longer than this are tokenized every time rather than remembered.
const MAX_SEEN_TEXT: usize = 4096;
/// At most this many texts are remembered per summary.
const MAX_SEEN_TEXTS: usize = 1024;

impl SeenTexts {
    /// `true` the first time `text` is offered (it is then remembered, within bounds).
    fn first_time(&mut self, text: &str) -> bool {
        if text.len() > MAX_SEEN_TEXT || self.0.len() >= MAX_SEEN_TEXTS {
            return !self.0.contains(text);
        }
        if self.0.contains(text) {
            return false;
        }
        self.0.insert(text.into());
        true
    }
}

/// Adds the terms of one span to a trace's term set, then keeps the [`MAX_TRACE_TERMS`]
/// smallest (so the set is the same whatever order the spans arrived in). A text already in
/// `seen` is skipped: its terms are in the set already, or were cut by the cap, which would cut
/// them again.
pub(super) fn add_span_terms(span: &Span, terms: &mut TermSet, seen: &mut SeenTexts) {
    add_span_terms_uncapped(span, terms, seen);
    if terms.len() > MAX_TRACE_TERMS {
        let mut all: Vec<String> = terms.drain().collect();
        all.sort_unstable();
        all.truncate(MAX_TRACE_TERMS);
        terms.extend(all);
    }
}

fn add_span_terms_uncapped(span: &Span, terms: &mut TermSet, seen: &mut SeenTexts) {
    let mut add = |text: &str| {
        if text.is_empty() || !seen.first_time(text) {
            return;
        }
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

    /// The char-by-char definition the fast path must agree with.
    fn terms_reference(text: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut term = String::new();
        let mut chars = 0usize;
        for c in text.chars().chain(std::iter::once(' ')) {
            if c.is_alphanumeric() {
                if chars < MAX_TERM_CHARS {
                    term.extend(c.to_lowercase());
                }
                chars += 1;
            } else if chars > 0 {
                if !is_stop_word(&term) {
                    out.push(std::mem::take(&mut term));
                }
                term.clear();
                chars = 0;
            }
        }
        out
    }

    #[test]
    fn the_ascii_fast_path_agrees_with_the_char_by_char_definition() {
        let long_mixed = format!("{}é{}", "A".repeat(40), "b".repeat(5));
        for text in [
            "Hello—World ÉCOLE straße naïve",
            "héllo wörld, ΑΒΓ 123abc ABC_def",
            "ends with é",
            "é",
            "—",
            "x—y—z",
            "The Invoice #42 is PENDING; why?",
            long_mixed.as_str(),
            "日本語のテキスト と English words",
            "",
        ] {
            assert_eq!(terms(text), terms_reference(text), "for {text:?}");
        }
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

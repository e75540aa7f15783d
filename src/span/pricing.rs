//! Pricing: model-name patterns → USD per 1M tokens, and what one call cost.
//!
//! Pure data and arithmetic. The table is filled by `config` (the built-in
//! `config/pricing.toml`, then the user's `pricing_file`, then `[pricing."…"]` tables in the
//! config file) and read by `assemble`, once per span, on the writer thread.
//!
//! # Matching
//! Names are compared case-insensitively. A pattern without `*` matches the model name itself
//! (tier 3) or a dated/versioned snapshot of it (tier 2): the name followed by `-` and a suffix
//! that starts with a digit or is `latest` (`gpt-4o` matches `gpt-4o-2024-08-06`;
//! `claude-sonnet-4-5` matches `claude-sonnet-4-5-20250929`; `gpt-4o` does *not* match
//! `gpt-4o-mini`). A pattern with `*` is a glob, `*` standing for any run of characters (tier 1).
//! The best tier wins, then the pattern with the most literal characters, then the
//! alphabetically first, so the result never depends on table order. A model routed as
//! `vendor/model` that matches nothing is tried again as `model`. No match → no cost (`null`),
//! never 0.

use super::LlmInfo;

/// Prices in USD per 1M tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Price {
    /// Fresh (uncached) prompt tokens.
    pub input: f64,
    /// Generated tokens, reasoning included.
    pub output: f64,
    /// Prompt tokens read from the provider's cache; defaults to `input`.
    pub cached_input: Option<f64>,
    /// Prompt tokens written to the cache (Anthropic's 5-minute cache writes); defaults to
    /// `input`.
    pub cache_write_input: Option<f64>,
}

impl Price {
    /// Every price must be a finite, non-negative number. The error names the bad field.
    pub fn validate(&self) -> Result<(), String> {
        let fields = [
            ("input", Some(self.input)),
            ("output", Some(self.output)),
            ("cached_input", self.cached_input),
            ("cache_write_input", self.cache_write_input),
        ];
        for (name, value) in fields {
            if let Some(v) = value {
                if !v.is_finite() || v < 0.0 {
                    return Err(format!(
                        "{name}: {v} is not a non-negative number of USD per 1M tokens"
                    ));
                }
            }
        }
        Ok(())
    }

    /// The cost of the tokens `llm` reports; `None` when it reports none.
    pub fn cost(&self, llm: &LlmInfo) -> Option<f64> {
        if llm.input_tokens.is_none() && llm.output_tokens.is_none() {
            return None;
        }
        let input = llm.input_tokens.unwrap_or(0);
        let read = llm.cached_input_tokens.unwrap_or(0).min(input);
        let write = llm
            .cache_write_tokens
            .unwrap_or(0)
            .min(input.saturating_sub(read));
        let fresh = input.saturating_sub(read).saturating_sub(write);
        let output = llm.output_tokens.unwrap_or(0);
        let usd = (fresh as f64 * self.input
            + read as f64 * self.cached_input.unwrap_or(self.input)
            + write as f64 * self.cache_write_input.unwrap_or(self.input)
            + output as f64 * self.output)
            / 1_000_000.0;
        usd.is_finite().then_some(usd)
    }
}

/// Model patterns and their prices.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PriceTable {
    /// (lower-cased pattern, price); patterns are unique.
    entries: Vec<(String, Price)>,
    /// Model name (as given) → index of its best entry: a call's model is almost always one
    /// seen before, and matching it against every pattern cost a quarter of a span's assembly.
    memo: Memo,
}

/// At most this many model names are remembered (then the memo starts over).
const MEMO_MAX: usize = 4096;

/// [`PriceTable::lookup`]'s answers so far. Not part of the table's value: a clone starts
/// empty and two tables compare equal whatever they remember.
#[derive(Default)]
struct Memo(std::sync::Mutex<std::collections::HashMap<String, Option<usize>>>);

impl Clone for Memo {
    fn clone(&self) -> Self {
        Memo::default()
    }
}

impl PartialEq for Memo {
    fn eq(&self, _: &Memo) -> bool {
        true
    }
}

impl std::fmt::Debug for Memo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Memo")
    }
}

impl PriceTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a pattern, replacing an entry with the same pattern (so a user's entry overrides
    /// the built-in one of the same name).
    pub fn insert(&mut self, pattern: &str, price: Price) {
        self.memo = Memo::default();
        let pattern = pattern.trim().to_ascii_lowercase();
        match self.entries.iter_mut().find(|(p, _)| *p == pattern) {
            Some(entry) => entry.1 = price,
            None => self.entries.push((pattern, price)),
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The best-matching pattern for `model` and its price.
    pub fn lookup(&self, model: &str) -> Option<(&str, Price)> {
        let remembered = self
            .memo
            .0
            .lock()
            .ok()
            .and_then(|memo| memo.get(model).copied());
        let index = match remembered {
            Some(index) => index,
            None => {
                let index = self.find(model);
                if let Ok(mut memo) = self.memo.0.lock() {
                    if memo.len() >= MEMO_MAX {
                        memo.clear();
                    }
                    memo.insert(model.to_string(), index);
                }
                index
            }
        };
        let (pattern, price) = self.entries.get(index?)?;
        Some((pattern.as_str(), *price))
    }

    /// The index of the best-matching entry for `model`, found by matching every pattern.
    fn find(&self, model: &str) -> Option<usize> {
        let model = model.trim().to_ascii_lowercase();
        if model.is_empty() {
            return None;
        }
        self.best(&model).or_else(|| {
            let (_, bare) = model.rsplit_once('/')?;
            self.best(bare)
        })
    }

    /// The cost of a call: the first of `models` that has a price decides.
    pub fn cost(&self, models: &[&str], llm: &LlmInfo) -> Option<f64> {
        let (_, price) = models.iter().find_map(|m| self.lookup(m))?;
        price.cost(llm)
    }

    fn best(&self, model: &str) -> Option<usize> {
        self.entries
            .iter()
            .enumerate()
            .filter_map(|(i, (pattern, _))| {
                specificity(pattern, model).map(|score| (score, pattern.as_str(), i))
            })
            // Highest score first; on a tie the alphabetically first pattern.
            .max_by(|(a, pa, _), (b, pb, _)| a.cmp(b).then_with(|| pb.cmp(pa)))
            .map(|(_, _, i)| i)
    }
}

/// (tier, literal characters) when `pattern` matches `model`; see the module doc.
fn specificity(pattern: &str, model: &str) -> Option<(u8, usize)> {
    if pattern.contains('*') {
        let literal = pattern.chars().filter(|c| *c != '*').count();
        return glob(pattern.as_bytes(), model.as_bytes()).then_some((1, literal));
    }
    if model == pattern {
        return Some((3, pattern.len()));
    }
    let suffix = model.strip_prefix(pattern)?.strip_prefix('-')?;
    let snapshot = suffix.starts_with(|c: char| c.is_ascii_digit()) || suffix == "latest";
    snapshot.then_some((2, pattern.len()))
}

/// `*` matches any run of bytes (including none); everything else matches itself.
/// Greedy with one backtrack point: linear in practice, O(n·m) at worst on short names.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(c) if *c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|c| *c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn price(input: f64, output: f64) -> Price {
        Price {
            input,
            output,
            cached_input: None,
            cache_write_input: None,
        }
    }

    #[test]
    fn remembered_answers_are_the_same_and_an_insert_forgets_them() {
        let mut t = PriceTable::new();
        t.insert("gpt-4o*", price(2.5, 10.0));
        for _ in 0..3 {
            let (pattern, p) = t.lookup(" GPT-4o-mini ").unwrap();
            assert_eq!((pattern, p.input), ("gpt-4o*", 2.5));
        }
        assert!(t.lookup("unknown-model").is_none());
        assert!(
            t.lookup("unknown-model").is_none(),
            "a miss is remembered as a miss"
        );
        t.insert("gpt-4o-mini", price(0.15, 0.6));
        let (pattern, p) = t.lookup(" GPT-4o-mini ").unwrap();
        assert_eq!(
            (pattern, p.input),
            ("gpt-4o-mini", 0.15),
            "a later, more specific entry wins over what was remembered"
        );
        assert_eq!(t.clone(), t, "the memo is not part of the value");
    }

    fn table(patterns: &[&str]) -> PriceTable {
        let mut t = PriceTable::new();
        for (i, p) in patterns.iter().enumerate() {
            t.insert(p, price(i as f64, 0.0));
        }
        t
    }

    #[test]
    fn the_most_specific_pattern_wins() {
        let t = table(&[
            "gpt-4o",
            "gpt-4o-mini",
            "gpt-4*",
            "claude-*",
            "claude-sonnet-4*",
            "claude-sonnet-4-5",
            "o3",
        ]);
        let cases = [
            ("gpt-4o", Some("gpt-4o")),
            ("GPT-4o", Some("gpt-4o")),
            ("gpt-4o-2024-08-06", Some("gpt-4o")),
            ("gpt-4o-mini", Some("gpt-4o-mini")),
            ("gpt-4o-mini-2024-07-18", Some("gpt-4o-mini")),
            ("gpt-4o-realtime", Some("gpt-4*")),
            ("gpt-4.1", Some("gpt-4*")),
            ("claude-sonnet-4-5-20250929", Some("claude-sonnet-4-5")),
            ("claude-sonnet-4-5-latest", Some("claude-sonnet-4-5")),
            ("claude-sonnet-4-20250514", Some("claude-sonnet-4*")),
            ("claude-3-5-haiku-latest", Some("claude-*")),
            ("o3-2025-04-16", Some("o3")),
            ("o3-mini", None),
            ("openrouter/gpt-4o-mini", Some("gpt-4o-mini")),
            ("mock-model", None),
            ("", None),
        ];
        for (model, want) in cases {
            assert_eq!(
                t.lookup(model).map(|(p, _)| p),
                want,
                "{model:?} must be priced by the most specific matching pattern"
            );
        }
    }

    #[test]
    fn ties_do_not_depend_on_insertion_order() {
        let a = table(&["gpt-*-mini", "gpt-4*"]);
        let b = table(&["gpt-4*", "gpt-*-mini"]);
        assert_eq!(
            a.lookup("gpt-4o-mini").map(|(p, _)| p.to_string()),
            b.lookup("gpt-4o-mini").map(|(p, _)| p.to_string()),
            "two globs of equal specificity resolve the same way whatever the table order"
        );
    }

    #[test]
    fn glob_handles_stars_anywhere() {
        for (pattern, text, want) in [
            ("*", "", true),
            ("*", "anything", true),
            ("a*c", "abbbc", true),
            ("a*c", "abbb", false),
            ("*mini*", "gpt-4o-mini-2024", true),
            ("a**b", "ab", true),
            ("a*b*c", "axbxbxc", true),
            ("abc", "abd", false),
        ] {
            assert_eq!(
                glob(pattern.as_bytes(), text.as_bytes()),
                want,
                "{pattern:?} against {text:?}"
            );
        }
    }

    #[test]
    fn insert_replaces_the_same_pattern() {
        let mut t = PriceTable::new();
        t.insert("gpt-4o", price(1.0, 2.0));
        t.insert("GPT-4o ", price(3.0, 4.0));
        assert_eq!(t.len(), 1, "one entry per pattern, case-insensitively");
        assert_eq!(t.lookup("gpt-4o").map(|(_, p)| p.input), Some(3.0));
    }

    #[test]
    fn cost_splits_cached_and_cache_write_tokens() {
        let p = Price {
            input: 3.0,
            output: 15.0,
            cached_input: Some(0.3),
            cache_write_input: Some(3.75),
        };
        let llm = LlmInfo {
            input_tokens: Some(1_000_000 + 2_000_000 + 4_000_000),
            cached_input_tokens: Some(2_000_000),
            cache_write_tokens: Some(4_000_000),
            output_tokens: Some(1_000_000),
            ..LlmInfo::default()
        };
        let cost = p.cost(&llm).unwrap();
        let want = 3.0 + 2.0 * 0.3 + 4.0 * 3.75 + 15.0;
        assert!(
            (cost - want).abs() < 1e-9,
            "fresh, cached, cache-write and output tokens each use their own price: {cost} vs {want}"
        );

        let no_tokens = LlmInfo::default();
        assert_eq!(
            p.cost(&no_tokens),
            None,
            "no token counts means no cost, not a cost of 0"
        );
        let only_input = LlmInfo {
            input_tokens: Some(2_000_000),
            ..LlmInfo::default()
        };
        assert_eq!(
            price(0.02, 0.0).cost(&only_input),
            Some(0.04),
            "an embeddings call has only input tokens"
        );
        let inconsistent = LlmInfo {
            input_tokens: Some(10),
            cached_input_tokens: Some(50),
            ..LlmInfo::default()
        };
        assert!(
            p.cost(&inconsistent).is_some_and(|c| c >= 0.0),
            "more cached tokens than input tokens never makes a negative cost"
        );
    }

    #[test]
    fn table_cost_tries_each_model_name_in_turn() {
        let mut t = PriceTable::new();
        t.insert("gpt-4o", price(2.5, 10.0));
        let llm = LlmInfo {
            input_tokens: Some(1_000_000),
            output_tokens: Some(0),
            ..LlmInfo::default()
        };
        assert_eq!(t.cost(&["my-azure-deployment", "gpt-4o"], &llm), Some(2.5));
        assert_eq!(
            t.cost(&["unknown"], &llm),
            None,
            "an unknown model has no cost (null), never 0"
        );
    }

    #[test]
    fn validation_names_the_bad_field() {
        let mut p = price(1.0, 1.0);
        assert!(p.validate().is_ok());
        p.cached_input = Some(-1.0);
        let e = p.validate().unwrap_err();
        assert!(e.starts_with("cached_input"), "{e}");
        p.cached_input = None;
        p.output = f64::NAN;
        assert!(p.validate().unwrap_err().starts_with("output"));
    }
}

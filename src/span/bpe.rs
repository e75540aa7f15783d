//! BPE token counting with compact tables: the same counts as tiktoken's `encode_ordinary`
//! (same pre-split pattern, same merge order), at a tenth of the memory.
//!
//! tiktoken-rs keeps each vocabulary three times over as maps of small heap `Vec`s (encoder,
//! decoder, sorted token list): about 47 MiB of RSS for `o200k_base` on the writer's first
//! estimate, more than the whole proxy otherwise holds. Here a vocabulary is one byte arena, one
//! `(offset, len)` per rank and one open-addressing table of ranks: about 5 MiB for `o200k_base`.
//! The rank files are OpenAI's published ones (`assets/tiktoken/`, gzipped), parsed on first use.
//!
//! Cold path only (span assembly on the writer thread). Counting, not encoding: nothing here
//! returns token ids.

use base64::{engine::general_purpose::STANDARD, Engine as _};
use fancy_regex::Regex;
use std::io::Read;

type Rank = u32;

/// Pre-split pattern of `cl100k_base` (tiktoken's, verbatim).
pub const CL100K_PATTERN: &str = "'(?i:[sdmt]|ll|ve|re)|[^\\r\\n\\p{L}\\p{N}]?+\\p{L}++|\\p{N}{1,3}+| ?[^\\s\\p{L}\\p{N}]++[\\r\\n]*+|\\s++$|\\s*[\\r\\n]|\\s+(?!\\S)|\\s";

/// Pre-split pattern of `o200k_base` (tiktoken's, verbatim).
pub const O200K_PATTERN: &str = concat!(
    r#"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"#,
    "|",
    r#"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"#,
    "|",
    r#"\p{N}{1,3}"#,
    "|",
    r#" ?[^\s\p{L}\p{N}]+[\r\n/]*"#,
    "|",
    r#"\s*[\r\n]+"#,
    "|",
    r#"\s+(?!\S)"#,
    "|",
    r#"\s+"#
);

/// OpenAI's rank files, gzipped: `<base64 token> <rank>` per line, ranks 0.. in order.
pub const O200K_RANKS: &[u8] = include_bytes!("../../assets/tiktoken/o200k_base.tiktoken.gz");
pub const CL100K_RANKS: &[u8] = include_bytes!("../../assets/tiktoken/cl100k_base.tiktoken.gz");

/// Pieces at least this long merge with a heap (n log n) instead of rescanning (n²), as
/// tiktoken does.
const LARGE_PIECE: usize = 100;

/// One vocabulary, packed.
pub struct Bpe {
    /// Every token's bytes, back to back.
    arena: Vec<u8>,
    /// Rank → (offset in `arena`, length).
    tokens: Vec<(u32, u32)>,
    /// Open addressing (linear probing), `rank + 1` per slot, 0 = empty. Power-of-two size.
    slots: Vec<u32>,
    regex: Regex,
}

impl Bpe {
    /// Parses a gzipped rank file and compiles the pre-split pattern.
    pub fn load(gz_ranks: &[u8], pattern: &str) -> Result<Self, String> {
        let mut text = String::new();
        flate2::read::GzDecoder::new(gz_ranks)
            .read_to_string(&mut text)
            .map_err(|e| format!("rank file: {e}"))?;
        let lines = text.lines().count();
        let mut arena = Vec::with_capacity(lines * 7);
        let mut tokens = Vec::with_capacity(lines);
        let mut scratch = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let (b64, rank) = line
                .split_once(' ')
                .ok_or_else(|| format!("rank file line {}: no rank", i + 1))?;
            if rank.parse::<usize>().ok() != Some(i) {
                return Err(format!(
                    "rank file line {}: ranks must be 0.. in order",
                    i + 1
                ));
            }
            scratch.clear();
            STANDARD
                .decode_vec(b64, &mut scratch)
                .map_err(|e| format!("rank file line {}: {e}", i + 1))?;
            let offset = u32::try_from(arena.len()).map_err(|_| "rank file too large")?;
            let len = u32::try_from(scratch.len()).map_err(|_| "token too long")?;
            arena.extend_from_slice(&scratch);
            tokens.push((offset, len));
        }
        drop(text);
        arena.shrink_to_fit();
        let size = (tokens.len() * 2).next_power_of_two().max(16);
        let mut bpe = Self {
            arena,
            tokens,
            slots: vec![0; size],
            regex: Regex::new(pattern).map_err(|e| format!("pattern: {e}"))?,
        };
        for rank in 0..bpe.tokens.len() {
            let (offset, len) = bpe.tokens[rank];
            let bytes = &bpe.arena[offset as usize..(offset + len) as usize];
            let mask = bpe.slots.len() - 1;
            let mut at = hash(bytes) & mask;
            while bpe.slots[at] != 0 {
                at = (at + 1) & mask;
            }
            bpe.slots[at] = rank as u32 + 1;
        }
        Ok(bpe)
    }

    /// The rank of a token, if `bytes` is one.
    fn rank(&self, bytes: &[u8]) -> Option<Rank> {
        let mask = self.slots.len() - 1;
        let mut at = hash(bytes) & mask;
        // Bounded: the table is at most half full, so an empty slot is always reached.
        for _ in 0..self.slots.len() {
            let slot = self.slots[at];
            if slot == 0 {
                return None;
            }
            let rank = slot - 1;
            let (offset, len) = self.tokens[rank as usize];
            if self.arena.get(offset as usize..(offset + len) as usize) == Some(bytes) {
                return Some(rank);
            }
            at = (at + 1) & mask;
        }
        None
    }

    fn rank_or_max(&self, bytes: &[u8]) -> Rank {
        self.rank(bytes).unwrap_or(Rank::MAX)
    }

    /// Tokens in `text`, as `CoreBPE::encode_ordinary(text).len()` counts them.
    pub fn count(&self, text: &str) -> usize {
        let mut n = 0;
        for piece in self.regex.find_iter(text) {
            // A match error is the backtracking limit of the look-around; count the rest as
            // one piece per 4 bytes rather than fail the span.
            let Ok(piece) = piece else {
                return n + text.len().div_ceil(4);
            };
            n += self.count_piece(piece.as_str().as_bytes());
        }
        n
    }

    fn count_piece(&self, piece: &[u8]) -> usize {
        if piece.len() <= 1 || self.rank(piece).is_some() {
            return usize::from(!piece.is_empty());
        }
        if piece.len() < LARGE_PIECE {
            self.merge_small(piece)
        } else {
            self.merge_large(piece)
        }
    }

    /// tiktoken's `_byte_pair_merge`: repeatedly merge the lowest-ranked adjacent pair (the
    /// leftmost on ties). Returns the number of parts left.
    fn merge_small(&self, piece: &[u8]) -> usize {
        let mut parts: Vec<(usize, Rank)> = Vec::with_capacity(piece.len() + 1);
        let mut min = (Rank::MAX, usize::MAX);
        for i in 0..piece.len() - 1 {
            let rank = self.rank_or_max(&piece[i..i + 2]);
            if rank < min.0 {
                min = (rank, i);
            }
            parts.push((i, rank));
        }
        parts.push((piece.len() - 1, Rank::MAX));
        parts.push((piece.len(), Rank::MAX));
        let rank_at = |parts: &Vec<(usize, Rank)>, i: usize| {
            if i + 3 < parts.len() {
                self.rank_or_max(&piece[parts[i].0..parts[i + 3].0])
            } else {
                Rank::MAX
            }
        };
        while min.0 != Rank::MAX {
            let i = min.1;
            if i > 0 {
                parts[i - 1].1 = rank_at(&parts, i - 1);
            }
            parts[i].1 = rank_at(&parts, i);
            parts.remove(i + 1);
            min = (Rank::MAX, usize::MAX);
            for (i, &(_, rank)) in parts[..parts.len() - 1].iter().enumerate() {
                if rank < min.0 {
                    min = (rank, i);
                }
            }
        }
        parts.len() - 1
    }

    /// tiktoken-rs's `_byte_pair_merge_large`: the same merges, chosen from a heap.
    fn merge_large(&self, piece: &[u8]) -> usize {
        use std::{cmp::Reverse, collections::BinaryHeap};
        struct State {
            prev: usize,
            end: usize,
            next_end: usize,
            next_rank: Rank,
        }
        let mut state = Vec::with_capacity(piece.len());
        state.push(State {
            prev: usize::MAX,
            end: 1,
            next_end: 2,
            next_rank: Rank::MAX,
        });
        // Min-heap on (rank, start): the lowest rank, leftmost first.
        let mut heap = BinaryHeap::with_capacity(piece.len());
        for i in 0..piece.len() - 1 {
            if let Some(rank) = self.rank(&piece[i..i + 2]) {
                heap.push(Reverse((rank, i)));
                state[i].next_rank = rank;
            }
            state.push(State {
                prev: i,
                end: i + 2,
                next_end: i + 3,
                next_rank: Rank::MAX,
            });
        }
        let potential = |state: &mut Vec<State>,
                         heap: &mut BinaryHeap<Reverse<(Rank, usize)>>,
                         start: usize,
                         next_end: usize| {
            state[start].next_end = next_end;
            state[start].next_rank = Rank::MAX;
            if next_end <= piece.len() {
                if let Some(rank) = self.rank(&piece[start..next_end]) {
                    heap.push(Reverse((rank, start)));
                    state[start].next_rank = rank;
                }
            }
        };
        while let Some(Reverse((rank, left_start))) = heap.pop() {
            if rank == Rank::MAX {
                break;
            }
            if rank != state[left_start].next_rank {
                continue; // invalidated by an earlier merge
            }
            let right_start = state[left_start].end;
            let right_end = state[left_start].next_end;
            let right_next_end = state[right_start].next_end;
            state[left_start].end = right_end;
            potential(&mut state, &mut heap, left_start, right_next_end);
            if right_end < state.len() {
                state[right_end].prev = left_start;
            }
            if left_start > 0 {
                let prev_start = state[left_start].prev;
                potential(&mut state, &mut heap, prev_start, right_end);
            }
            state[right_start].next_rank = Rank::MAX;
        }
        let mut parts = 0;
        let mut i = 0;
        while i < state.len() {
            parts += 1;
            i = state[i].end;
        }
        parts
    }
}

/// FNV-1a: short keys (tokens average 6–7 bytes), no per-table random state needed.
fn hash(bytes: &[u8]) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // Fold the high bits in: the table index uses the low ones.
    (h ^ (h >> 29)) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Text of every kind the pre-split and the merges treat differently.
    fn corpus() -> Vec<String> {
        let mut texts: Vec<String> = [
            "hello world",
            "tiktoken is great!",
            "",
            " ",
            "\n\n\n",
            "  leading and trailing  ",
            "I'm sure they'll say it's what we've done, DON'T YOU'D?",
            "1234567890 3.14159 1e10 0x7fff",
            "naïve café résumé — “quotes” ‘single’ …",
            "日本語のテキストと中文文本，以及한국어 텍스트.",
            "emoji 🎉🚀👩‍👩‍👧‍👦 and flags 🇫🇷🇯🇵",
            "fn main() {\n    println!(\"{}\", x.map(|y| y * 2));\n}\n",
            "{\"model\":\"gpt-4o-mini\",\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}]}",
            "tabs\tand\r\nwindows\r\nline ends\t\t",
            "Ünïcödé ÄÖÜ ß ﬁ ﬀ ǅ ǈ Ǳ",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        // Long runs: one piece of hundreds of bytes (the heap merge) and repeated words.
        texts.push("a".repeat(3000));
        texts.push("ab1".repeat(700));
        texts.push("xq".repeat(150));
        texts.push("€".repeat(400));
        texts.push("The quick brown fox jumps over the lazy dog. ".repeat(50));
        for path in [
            "README.md",
            "tests/fixtures/openai_chat.json",
            "tests/fixtures/openai_chat_stream.sse",
        ] {
            let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
            if let Ok(text) = std::fs::read_to_string(p) {
                texts.extend(text.split("\n\n").map(str::to_string));
            }
        }
        texts
    }

    #[test]
    fn counts_match_tiktoken_for_both_encodings() {
        for (name, ours, theirs) in [
            (
                "o200k_base",
                Bpe::load(O200K_RANKS, O200K_PATTERN).unwrap(),
                tiktoken_rs::o200k_base().unwrap(),
            ),
            (
                "cl100k_base",
                Bpe::load(CL100K_RANKS, CL100K_PATTERN).unwrap(),
                tiktoken_rs::cl100k_base().unwrap(),
            ),
        ] {
            let corpus = corpus();
            assert!(corpus.len() > 50, "the corpus includes the README");
            for text in &corpus {
                assert_eq!(
                    ours.count(text),
                    theirs.encode_ordinary(text).len(),
                    "{name}: the compact tables count {:?} as tiktoken does",
                    text.chars().take(60).collect::<String>()
                );
            }
        }
    }

    #[test]
    fn a_bad_rank_file_is_an_error_not_a_panic() {
        assert!(Bpe::load(b"not gzip", CL100K_PATTERN).is_err());
        let mut gz = Vec::new();
        {
            use std::io::Write;
            let mut e = flate2::write::GzEncoder::new(&mut gz, flate2::Compression::fast());
            e.write_all(b"IQ== 0\nIg== 5\n").unwrap();
        }
        let err = Bpe::load(&gz, CL100K_PATTERN).err().unwrap();
        assert!(err.contains("line 2"), "the error names the line: {err}");
    }
}

//! SQL text: the ONE place where values from the API become SQL. ClickHouse 18.16 (Debian's)
//! has no query parameters (`{x:String}` and `param_x` are rejected), so every value is either a
//! number formatted by Rust or a string passed through [`string`], which makes it a single-quoted
//! literal that cannot end early: backslash and quote are escaped, NUL and every control char
//! become escapes, everything else (UTF-8 included) is copied. Inside a literal, `FORMAT`, `--`,
//! `/*` and `;` are only text. Identifiers (the database name) are checked by [`is_identifier`]
//! at configuration time and quoted with backticks by [`ident`].

use std::fmt::Write as _;

/// `s` as a ClickHouse string literal, quotes included.
pub fn string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '\0' => out.push_str("\\0"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() && (c as u32) < 0x80 => {
                let _ = write!(out, "\\x{:02X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// A database or table name we accept: 1–64 chars of `[A-Za-z0-9_]`, not starting with a digit.
pub fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && !s.starts_with(|c: char| c.is_ascii_digit())
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// A checked identifier in backticks (`is_identifier` guarantees no backtick inside).
pub fn ident(s: &str) -> String {
    format!("`{s}`")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_escape_everything_that_could_end_them() {
        let table = [
            ("", "''"),
            ("plain", "'plain'"),
            ("it's", r"'it\'s'"),
            (r"back\slash", r"'back\\slash'"),
            (r"\'", r"'\\\''"),
            ("' OR 1=1 --", r"'\' OR 1=1 --'"),
            ("a\0b", r"'a\0b'"),
            ("line\nbreak\r\t", r"'line\nbreak\r\t'"),
            ("\u{1}\u{1f}\u{7f}", r"'\x01\x1F\x7F'"),
            ("FORMAT JSON", "'FORMAT JSON'"),
            ("/* x */ ; SELECT 1", "'/* x */ ; SELECT 1'"),
            ("héllo ✓", "'héllo ✓'"),
        ];
        for (input, want) in table {
            assert_eq!(string(input), want, "literal of {input:?}");
        }
    }

    #[test]
    fn a_literal_has_exactly_two_unescaped_quotes() {
        for input in ["'", "''", r"\", r"\'", "x'\\'y", "\\\\'"] {
            let lit = string(input);
            let bytes = lit.as_bytes();
            let mut unescaped = 0;
            let mut i = 0;
            while i < bytes.len() {
                match bytes[i] {
                    b'\\' => i += 2,
                    b'\'' => {
                        unescaped += 1;
                        i += 1;
                    }
                    _ => i += 1,
                }
            }
            assert_eq!(
                unescaped, 2,
                "{input:?} became {lit}, which must open and close once"
            );
        }
    }

    #[test]
    fn identifiers_are_strict() {
        for ok in ["llm_tracer", "db1", "_x", "A"] {
            assert!(is_identifier(ok), "{ok} is a valid identifier");
        }
        for bad in ["", "1db", "a-b", "a`b", "a b", "db;", "é", &"x".repeat(65)] {
            assert!(!is_identifier(bad), "{bad:?} must be rejected");
        }
    }
}

//! Encoding of stored values, and the error for a record that does not decode.

use super::*;

pub(super) fn show_key(key: &[u8]) -> String {
    key.escape_ascii().to_string()
}

pub(super) fn corrupt(key: &[u8], message: &str) -> StoreError {
    StoreError::Corrupt {
        key: show_key(key),
        message: message.to_string(),
    }
}

pub(super) fn encode_json<T: Serialize>(value: &T, key: &[u8]) -> Result<Vec<u8>, StoreError> {
    // Sized for a typical span up front: growing from serde_json's default by doubling cost
    // about a tenth of a write in reallocations.
    let mut out = Vec::with_capacity(2048);
    serde_json::to_writer(&mut out, value)
        .map(|()| out)
        .map_err(|e| StoreError::Corrupt {
            key: show_key(key),
            message: format!("cannot encode: {e}"),
        })
}

pub(super) fn decode_json<T: for<'de> Deserialize<'de>>(
    key: &[u8],
    value: &[u8],
) -> Result<T, StoreError> {
    serde_json::from_slice(value).map_err(|e| StoreError::Corrupt {
        key: show_key(key),
        message: e.to_string(),
    })
}

/// Decodes a compact binary record (see [`Enc`]); `None` from `read` means it is truncated or
/// malformed.
pub(super) fn decode_bin<'a, T>(
    key: &[u8],
    value: &'a [u8],
    read: impl FnOnce(&mut Dec<'a>) -> Option<T>,
) -> Result<T, StoreError> {
    let mut dec = Dec { buf: value };
    match read(&mut dec) {
        Some(v) if dec.buf.is_empty() => Ok(v),
        Some(_) => Err(corrupt(key, "record has trailing bytes")),
        None => Err(corrupt(key, "record is truncated or malformed")),
    }
}

/// A compact binary encoding for the small records that are read often: trace summaries (every
/// list page reads 50) and call records (stats scan them all). Varints, length-prefixed UTF-8,
/// fields in a fixed order, no names; about 3× smaller and 10× cheaper than JSON for these. Span
/// bodies stay JSON (they are arbitrary JSON).
pub(super) struct Enc(pub(super) Vec<u8>);

impl Enc {
    pub(super) fn with_capacity(n: usize) -> Enc {
        Enc(Vec::with_capacity(n))
    }
    pub(super) fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    pub(super) fn bool(&mut self, v: bool) {
        self.0.push(u8::from(v));
    }
    pub(super) fn u64(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }
    pub(super) fn f64(&mut self, v: f64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub(super) fn str(&mut self, s: &str) {
        self.u64(s.len() as u64);
        self.0.extend_from_slice(s.as_bytes());
    }
    pub(super) fn bytes(&mut self, b: &[u8]) {
        self.u64(b.len() as u64);
        self.0.extend_from_slice(b);
    }
    pub(super) fn opt_str(&mut self, s: Option<&str>) {
        match s {
            None => self.u8(0),
            Some(s) => {
                self.u8(1);
                self.str(s);
            }
        }
    }
    pub(super) fn opt_u64(&mut self, v: Option<u64>) {
        match v {
            None => self.u8(0),
            Some(v) => {
                self.u8(1);
                self.u64(v);
            }
        }
    }
    pub(super) fn strs<'a>(&mut self, items: impl ExactSizeIterator<Item = &'a String>) {
        self.u64(items.len() as u64);
        for s in items {
            self.str(s);
        }
    }
}

/// Reads what [`Enc`] wrote; every method is `None` on truncated or malformed input.
pub(super) struct Dec<'a> {
    buf: &'a [u8],
}

impl<'a> Dec<'a> {
    pub(super) fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.buf.split_first()?;
        self.buf = rest;
        Some(b)
    }
    pub(super) fn bool(&mut self) -> Option<bool> {
        match self.u8()? {
            0 => Some(false),
            1 => Some(true),
            _ => None,
        }
    }
    pub(super) fn u64(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            v |= u64::from(b & 0x7F).checked_shl(shift)?;
            if b < 0x80 {
                return Some(v);
            }
        }
        None
    }
    pub(super) fn f64(&mut self) -> Option<f64> {
        let (bytes, rest) = self.buf.split_at_checked(8)?;
        self.buf = rest;
        Some(f64::from_le_bytes(bytes.try_into().ok()?))
    }
    pub(super) fn str(&mut self) -> Option<&'a str> {
        let n = usize::try_from(self.u64()?).ok()?;
        let (bytes, rest) = self.buf.split_at_checked(n)?;
        self.buf = rest;
        std::str::from_utf8(bytes).ok()
    }
    pub(super) fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = usize::try_from(self.u64()?).ok()?;
        let (bytes, rest) = self.buf.split_at_checked(n)?;
        self.buf = rest;
        Some(bytes)
    }
    pub(super) fn string(&mut self) -> Option<String> {
        self.str().map(str::to_string)
    }
    pub(super) fn opt<T>(
        &mut self,
        read: impl FnOnce(&mut Self) -> Option<T>,
    ) -> Option<Option<T>> {
        match self.u8()? {
            0 => Some(None),
            1 => read(self).map(Some),
            _ => None,
        }
    }
    pub(super) fn opt_string(&mut self) -> Option<Option<String>> {
        self.opt(Dec::string)
    }
    pub(super) fn strs(&mut self) -> Option<BTreeSet<String>> {
        let n = self.u64()?;
        // Each string takes at least one byte: a count beyond what is left is corrupt, and
        // checking it first keeps a bad count from looping long.
        if n > self.buf.len() as u64 {
            return None;
        }
        let mut out = BTreeSet::new();
        for _ in 0..n {
            out.insert(self.string()?);
        }
        Some(out)
    }
}

//! A compact binary encoding (varints, length-prefixed UTF-8, fields in a fixed order, no
//! names) for the store's small records and the capture spool's records.

use std::collections::BTreeSet;

/// A compact binary encoding for the small records that are read often: trace summaries (every
/// list page reads 50) and call records (stats scan them all). Varints, length-prefixed UTF-8,
/// fields in a fixed order, no names; about 3× smaller and 10× cheaper than JSON for these. Span
/// bodies stay JSON (they are arbitrary JSON).
pub(crate) struct Enc(pub(crate) Vec<u8>);

impl Enc {
    pub(crate) fn with_capacity(n: usize) -> Enc {
        Enc(Vec::with_capacity(n))
    }
    pub(crate) fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    pub(crate) fn bool(&mut self, v: bool) {
        self.0.push(u8::from(v));
    }
    pub(crate) fn u64(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }
    pub(crate) fn f64(&mut self, v: f64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub(crate) fn str(&mut self, s: &str) {
        self.u64(s.len() as u64);
        self.0.extend_from_slice(s.as_bytes());
    }
    /// `b` as is, no length (the reader knows it from an earlier field).
    pub(crate) fn raw(&mut self, b: &[u8]) {
        self.0.extend_from_slice(b);
    }
    pub(crate) fn opt_str(&mut self, s: Option<&str>) {
        match s {
            None => self.u8(0),
            Some(s) => {
                self.u8(1);
                self.str(s);
            }
        }
    }
    pub(crate) fn opt_u64(&mut self, v: Option<u64>) {
        match v {
            None => self.u8(0),
            Some(v) => {
                self.u8(1);
                self.u64(v);
            }
        }
    }
    pub(crate) fn strs<'a>(&mut self, items: impl ExactSizeIterator<Item = &'a String>) {
        self.u64(items.len() as u64);
        for s in items {
            self.str(s);
        }
    }
}

/// Reads what [`Enc`] wrote; every method is `None` on truncated or malformed input.
pub(crate) struct Dec<'a> {
    buf: &'a [u8],
}

impl<'a> Dec<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Dec<'a> {
        Dec { buf }
    }
    /// Bytes not read yet.
    pub(crate) fn rest(&self) -> &'a [u8] {
        self.buf
    }
    pub(crate) fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.buf.split_first()?;
        self.buf = rest;
        Some(b)
    }
    pub(crate) fn bool(&mut self) -> Option<bool> {
        match self.u8()? {
            0 => Some(false),
            1 => Some(true),
            _ => None,
        }
    }
    pub(crate) fn u64(&mut self) -> Option<u64> {
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
    pub(crate) fn f64(&mut self) -> Option<f64> {
        let (bytes, rest) = self.buf.split_at_checked(8)?;
        self.buf = rest;
        Some(f64::from_le_bytes(bytes.try_into().ok()?))
    }
    pub(crate) fn str(&mut self) -> Option<&'a str> {
        let n = usize::try_from(self.u64()?).ok()?;
        let (bytes, rest) = self.buf.split_at_checked(n)?;
        self.buf = rest;
        std::str::from_utf8(bytes).ok()
    }
    pub(crate) fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = usize::try_from(self.u64()?).ok()?;
        self.take(n)
    }
    /// The next `n` bytes, as [`Enc::raw`] wrote them.
    pub(crate) fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (bytes, rest) = self.buf.split_at_checked(n)?;
        self.buf = rest;
        Some(bytes)
    }
    pub(crate) fn string(&mut self) -> Option<String> {
        self.str().map(str::to_string)
    }
    pub(crate) fn opt<T>(
        &mut self,
        read: impl FnOnce(&mut Self) -> Option<T>,
    ) -> Option<Option<T>> {
        match self.u8()? {
            0 => Some(None),
            1 => read(self).map(Some),
            _ => None,
        }
    }
    pub(crate) fn opt_string(&mut self) -> Option<Option<String>> {
        self.opt(Dec::string)
    }
    pub(crate) fn strs(&mut self) -> Option<BTreeSet<String>> {
        let n = self.count()?;
        let mut out = BTreeSet::new();
        for _ in 0..n {
            out.insert(self.string()?);
        }
        Some(out)
    }
    /// What [`Enc::strs`] wrote, in its order.
    pub(crate) fn string_list(&mut self) -> Option<Vec<String>> {
        let n = self.count()?;
        (0..n).map(|_| self.string()).collect()
    }
    /// A count of items of at least one byte each: a count beyond what is left is corrupt, and
    /// checking it first keeps a bad count from looping long.
    pub(crate) fn count(&mut self) -> Option<u64> {
        let n = self.u64()?;
        (n <= self.buf.len() as u64).then_some(n)
    }
}

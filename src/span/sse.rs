//! Server-sent events: a byte-level, incremental parser that follows the WHATWG event-stream
//! rules (line endings `\n`, `\r\n` or a lone `\r`; `:` comments; `event:`/`data:`/`id:`/`retry:`
//! fields; one leading space after the colon stripped; a blank line dispatches).
//!
//! Owns framing only: it knows nothing of what the data means (that is `openai` and friends).
//! Input may arrive split at any byte, even inside a `\r\n` pair or a multi-byte UTF-8 char: lines
//! are kept as raw bytes and decoded only once whole. Each event carries the byte offset where it
//! ended, so the caller can map it to the arrival time of the frame that completed it.

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The `event:` field; `None` stands for the default type, `message`.
    pub event: Option<String>,
    /// The `data:` lines, joined with `\n`.
    pub data: String,
    /// The last event ID in effect: per the spec an `id:` persists until the next one.
    pub id: Option<String>,
    /// A `retry:` value given in this event's block.
    pub retry: Option<u64>,
    /// Offset just past the line-end byte that dispatched the event (the end of the input for a
    /// last event without a blank line). Deterministic however the input was split.
    pub end: u64,
    /// False for a last event that ended with the input instead of a blank line. The spec drops
    /// such an event; we keep it (a stream cut short still said something) but say so.
    pub complete: bool,
}

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Incremental parser: `feed` chunks as they come, then `finish`.
#[derive(Debug, Default)]
pub struct Parser {
    /// Bytes of the line being read, undecoded.
    line: Vec<u8>,
    /// The previous byte was a `\r`: a `\n` right after it belongs to the same line ending.
    after_cr: bool,
    /// Bytes consumed so far.
    offset: u64,
    /// A first line has ended (the BOM can only lead the first one).
    seen_line: bool,
    data: String,
    has_data: bool,
    event: Option<String>,
    retry: Option<u64>,
    last_id: Option<String>,
}

impl Parser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Consumes one chunk; events it completes are pushed to `out`.
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<Event>) {
        while !input.is_empty() {
            if self.after_cr {
                self.after_cr = false;
                if let Some(rest) = input.strip_prefix(b"\n".as_slice()) {
                    self.offset += 1;
                    input = rest;
                    continue;
                }
            }
            match input.iter().position(|&b| b == b'\n' || b == b'\r') {
                None => {
                    self.line.extend_from_slice(input);
                    self.offset += input.len() as u64;
                    return;
                }
                Some(i) => {
                    let (head, tail) = input.split_at(i);
                    self.line.extend_from_slice(head);
                    self.offset += i as u64 + 1;
                    self.after_cr = tail.first() == Some(&b'\r');
                    self.end_line(out);
                    input = tail.get(1..).unwrap_or_default();
                }
            }
        }
    }

    /// Ends the input: a last unterminated line is read as a field, and a pending event is
    /// dispatched with `complete: false`.
    pub fn finish(mut self, out: &mut Vec<Event>) {
        if !self.line.is_empty() {
            let line = self.take_line();
            if !line.is_empty() {
                self.field(&line);
            }
        }
        self.dispatch(false, out);
    }

    fn take_line(&mut self) -> Vec<u8> {
        let mut line = std::mem::take(&mut self.line);
        if !self.seen_line {
            self.seen_line = true;
            if line.starts_with(BOM) {
                line.drain(..BOM.len());
            }
        }
        line
    }

    fn end_line(&mut self, out: &mut Vec<Event>) {
        let mut line = self.take_line();
        if line.is_empty() {
            self.dispatch(true, out);
        } else {
            self.field(&line);
        }
        line.clear();
        self.line = line; // keeps the allocation for the next line
    }

    fn field(&mut self, line: &[u8]) {
        if line.first() == Some(&b':') {
            return; // a comment (often a keep-alive)
        }
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(i) => {
                let (name, rest) = line.split_at(i);
                let value = rest.get(1..).unwrap_or_default();
                (name, value.strip_prefix(b" ".as_slice()).unwrap_or(value))
            }
            None => (line, &[][..]),
        };
        match name {
            b"data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(&String::from_utf8_lossy(value));
                self.has_data = true;
            }
            b"event" => self.event = Some(String::from_utf8_lossy(value).into_owned()),
            b"id" if !value.contains(&0) => {
                self.last_id =
                    (!value.is_empty()).then(|| String::from_utf8_lossy(value).into_owned());
            }
            // All ASCII digits, so UTF-8; an overflowing value is ignored like a bad one.
            b"retry" if !value.is_empty() && value.iter().all(u8::is_ascii_digit) => {
                self.retry = std::str::from_utf8(value).ok().and_then(|s| s.parse().ok());
            }
            _ => {} // unknown fields and bad values are ignored, per the spec
        }
    }

    fn dispatch(&mut self, complete: bool, out: &mut Vec<Event>) {
        let event = self.event.take().filter(|e| !e.is_empty());
        let retry = self.retry.take();
        if std::mem::take(&mut self.has_data) {
            out.push(Event {
                event,
                data: std::mem::take(&mut self.data),
                id: self.last_id.clone(),
                retry,
                end: self.offset,
                complete,
            });
        }
    }
}

/// Parses a whole body.
pub fn parse(input: &[u8]) -> Vec<Event> {
    let mut out = Vec::new();
    let mut parser = Parser::new();
    parser.feed(input, &mut out);
    parser.finish(&mut out);
    out
}

#[cfg(test)]
mod tests;

//! H1: one HTTP/1.1 exchange on a plain-http upstream connection, run inline in the task that
//! asked for it.
//!
//! hyper's client runs each connection as a task of its own and talks to it through channels:
//! per request a send on one channel, a oneshot back, and two task wake-ups, about a third of
//! the proxy's instructions per request (callgrind, bench/RESULTS.md). Here the handler's task
//! writes the request and reads the response itself, and the response body reads the socket in
//! whatever task polls it (hyper's server connection). The wire work is the same: one write of
//! head and body when the body is already there, one read of the response.
//!
//! Scope: what an upstream of this proxy speaks. Requests: `Content-Length` bodies as they are,
//! bodies of unknown length chunked. Responses: 1xx interim heads skipped, then the final head;
//! a body by `Content-Length`, `Transfer-Encoding: chunked` (trailers are read and dropped) or
//! until the connection closes; none for `HEAD`, 204 and 304. An upgrade (101) is refused.
//! The connection goes back to the pool only after a complete exchange with keep-alive.

use std::{
    future::{poll_fn, Future},
    io::IoSlice,
    mem::MaybeUninit,
    pin::Pin,
    sync::Weak,
    task::{ready, Context, Poll},
    time::Instant,
};

use bytes::{Buf, Bytes, BytesMut};
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::AsyncWrite;

use super::{Pool, RequestBody};
use crate::deadline::Deadline;

/// The most headers a response head may carry (hyper's default).
const MAX_HEADERS: usize = 100;

/// The largest response head accepted.
const MAX_HEAD: usize = 256 * 1024;

/// The longest chunk-size or trailer line accepted.
const MAX_LINE: usize = 4096;

/// Read size for response bytes.
const READ_CHUNK: usize = 16 * 1024;

/// A pooled connection: the socket, what was read past the last exchange (always empty for
/// a connection in the pool: one with spare bytes is not reused), and the response-head timer.
pub(super) struct Conn {
    pub(super) io: tokio::net::TcpStream,
    buf: BytesMut,
    /// Re-armed per exchange, for the price of a store (`deadline`): a tokio `Sleep` reset
    /// converted the deadline to a wheel tick and re-registered the waker every time.
    timer: Deadline,
}

impl Conn {
    pub(super) fn new(io: tokio::net::TcpStream, deadline: Instant) -> Self {
        Self {
            io,
            buf: BytesMut::new(),
            timer: Deadline::new(deadline),
        }
    }

    /// Whether an idle connection can take a request: not closed by the upstream, no stray
    /// bytes. Reads only what is already there (no wait).
    pub(super) fn is_usable(&self) -> bool {
        let mut probe = [0u8; 1];
        matches!(self.io.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }
}

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error("upstream write error: {0}")]
    Write(std::io::Error),
    #[error("upstream read error: {0}")]
    Read(std::io::Error),
    #[error("upstream closed the connection before a response")]
    ClosedBeforeHead,
    #[error("invalid upstream response: {0}")]
    Invalid(String),
    #[error("request body error: {0}")]
    RequestBody(String),
    #[error("no response head by the deadline")]
    TimedOut,
}

/// The upstream's response body on a plain-http connection.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("upstream read error: {0}")]
    Read(std::io::Error),
    #[error("upstream closed the connection before the end of the body")]
    Incomplete,
    #[error("invalid chunked body: {0}")]
    Chunked(&'static str),
}

/// A request handed back unsent: its connection (a reused one the upstream had just closed)
/// failed before any byte of it was written or any of its body read.
pub(super) struct Unsent {
    pub(super) req: Request<RequestBody>,
}

/// Sends `req` on `conn` and reads the response head, until `deadline`. `Err(Ok(unsent))`:
/// nothing of the request reached the connection, and it may go on another.
pub(super) async fn exchange(
    mut conn: Conn,
    req: Request<RequestBody>,
    pool: Weak<Pool>,
    deadline: Instant,
) -> Result<Response<PlainBody>, Result<Unsent, ExchangeError>> {
    conn.timer.reset(deadline);
    let head_only = req.method() == Method::HEAD;
    let (parts, mut body) = req.into_parts();
    let framing = Framing::of(&parts.headers, &body);
    let mut out = Outgoing {
        head: Some(encode_head(&parts, framing)),
        frame: None,
        chunked: matches!(framing, Framing::Chunked),
        body_done: body.is_end_stream(),
        terminated: !matches!(framing, Framing::Chunked),
        wrote_any: false,
        took_any: false,
        failed: None,
    };
    let head = poll_fn(|cx| {
        // Send what can be sent, then look for the response: an upstream may answer (and
        // stop reading) before the whole upload is in; a write error is reported only if no
        // response comes.
        if out.failed.is_none() {
            if let Poll::Ready(Err(e)) = out.poll_send(cx, &mut conn, &mut body) {
                out.failed = Some(e);
            }
        }
        loop {
            match parse_head(&mut conn.buf, head_only)? {
                Some(Parsed::Interim) => continue,
                Some(Parsed::Final(head)) => return Poll::Ready(Ok(head)),
                None => {}
            }
            if conn.buf.len() >= MAX_HEAD {
                return Poll::Ready(Err(ExchangeError::Invalid(
                    "response head too large".into(),
                )));
            }
            let read = match poll_read(&mut conn, cx) {
                Poll::Ready(read) => read,
                // Nothing to read yet; a failed write will not be followed by a response
                // unless the upstream already sent one, so stop waiting for it.
                Poll::Pending => match out.failed.take() {
                    Some(e) => return Poll::Ready(Err(e)),
                    None if Pin::new(&mut conn.timer).poll(cx).is_ready() => {
                        return Poll::Ready(Err(ExchangeError::TimedOut))
                    }
                    None => return Poll::Pending,
                },
            };
            match read {
                Ok(0) => {
                    return Poll::Ready(Err(match out.failed.take() {
                        Some(e) => e,
                        None if conn.buf.is_empty() => ExchangeError::ClosedBeforeHead,
                        None => ExchangeError::Invalid(
                            "connection closed inside the response head".into(),
                        ),
                    }))
                }
                Ok(_) => {}
                Err(e) => {
                    return Poll::Ready(Err(out.failed.take().unwrap_or(ExchangeError::Read(e))))
                }
            }
        }
    })
    .await;
    let head = match head {
        Ok(head) => head,
        Err(ExchangeError::Write(_) | ExchangeError::ClosedBeforeHead | ExchangeError::Read(_))
            if !out.wrote_any && !out.took_any =>
        {
            return Err(Ok(Unsent {
                req: Request::from_parts(parts, body),
            }));
        }
        Err(e) => return Err(Err(e)),
    };
    // The connection can carry another exchange only after all of this one.
    let request_complete =
        out.body_done && out.frame.is_none() && out.terminated && out.failed.is_none();
    let mut rsp = Response::new(PlainBody {
        conn: Some(conn),
        kind: head.kind,
        reusable: head.keep_alive && request_complete,
        pool,
        yielded: false,
        deferred: None,
    });
    *rsp.status_mut() = head.status;
    *rsp.version_mut() = head.version;
    *rsp.headers_mut() = head.headers;
    rsp.body_mut().release_if_done();
    Ok(rsp)
}

// === Request ===

/// How the request body goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// The app's `Content-Length`: bytes as they are.
    Given,
    /// A body of known size without the header (HTTP/2 apps may omit it): the header is added.
    Length(u64),
    /// Unknown length: chunked.
    Chunked,
    /// No body.
    None,
}

impl Framing {
    fn of(headers: &HeaderMap, body: &RequestBody) -> Self {
        if headers.contains_key(header::CONTENT_LENGTH) {
            Framing::Given
        } else if body.is_end_stream() {
            Framing::None
        } else {
            body.size_hint()
                .exact()
                .map_or(Framing::Chunked, Framing::Length)
        }
    }
}

/// The request line and headers, with the framing header the body needs.
fn encode_head(parts: &http::request::Parts, framing: Framing) -> Vec<u8> {
    let mut head = Vec::with_capacity(256 + parts.headers.len() * 48);
    head.extend_from_slice(parts.method.as_str().as_bytes());
    head.push(b' ');
    if parts.method == Method::CONNECT {
        head.extend_from_slice(parts.uri.authority().map_or("", |a| a.as_str()).as_bytes());
    } else {
        head.extend_from_slice(
            parts
                .uri
                .path_and_query()
                .map_or("/", |pq| pq.as_str())
                .as_bytes(),
        );
    }
    head.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in &parts.headers {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    match framing {
        Framing::Chunked => head.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::Length(n) => {
            head.extend_from_slice(format!("content-length: {n}\r\n").as_bytes());
        }
        // As hyper's client: a body-carrying method says its empty body is empty.
        Framing::None if matches!(parts.method, Method::POST | Method::PUT | Method::PATCH) => {
            head.extend_from_slice(b"content-length: 0\r\n");
        }
        Framing::None | Framing::Given => {}
    }
    head.extend_from_slice(b"\r\n");
    head
}

/// What is left to write of the request.
struct Outgoing {
    head: Option<Vec<u8>>,
    /// A body frame taken from the app and not yet fully written (chunk framing included).
    frame: Option<Bytes>,
    chunked: bool,
    body_done: bool,
    /// The chunked terminator is taken for writing (or not needed).
    terminated: bool,
    /// Some bytes went out.
    wrote_any: bool,
    /// A body frame was taken from the app.
    took_any: bool,
    /// Writing failed; the response may still come.
    failed: Option<ExchangeError>,
}

impl Outgoing {
    /// Writes as much as can be written now. `Ready(Ok)`: all of it is written.
    fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        conn: &mut Conn,
        body: &mut RequestBody,
    ) -> Poll<Result<(), ExchangeError>> {
        loop {
            // Take the next body frame when none is waiting (without waiting for one).
            if self.frame.is_none() && !self.body_done {
                match Pin::new(&mut *body).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        self.took_any = true;
                        if let Ok(data) = frame.into_data() {
                            if !data.is_empty() {
                                self.frame = Some(self.frame_bytes(data));
                            }
                        }
                        if body.is_end_stream() {
                            self.body_done = true;
                        }
                    }
                    Poll::Ready(Some(Err(e))) => {
                        return Poll::Ready(Err(ExchangeError::RequestBody(e.to_string())))
                    }
                    Poll::Ready(None) => self.body_done = true,
                    Poll::Pending => {}
                }
            }
            if self.body_done && self.frame.is_none() && !self.terminated {
                self.frame = Some(Bytes::from_static(b"0\r\n\r\n"));
                self.terminated = true;
            }
            let head_len = self.head.as_ref().map_or(0, Vec::len);
            let frame_len = self.frame.as_ref().map_or(0, Bytes::len);
            if head_len + frame_len == 0 {
                return if self.body_done && self.terminated {
                    Poll::Ready(Ok(()))
                } else {
                    Poll::Pending // waiting for the app's next body frame
                };
            }
            let slices = [
                IoSlice::new(self.head.as_deref().unwrap_or_default()),
                IoSlice::new(self.frame.as_deref().unwrap_or_default()),
            ];
            let n = match Pin::new(&mut conn.io).poll_write_vectored(cx, &slices) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(ExchangeError::Write(
                        std::io::ErrorKind::WriteZero.into(),
                    )))
                }
                Poll::Ready(Ok(n)) => n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(ExchangeError::Write(e))),
                Poll::Pending => return Poll::Pending,
            };
            self.wrote_any = true;
            let from_head = n.min(head_len);
            if let Some(head) = &mut self.head {
                head.drain(..from_head);
                if head.is_empty() {
                    self.head = None;
                }
            }
            let from_frame = n - from_head;
            if let Some(frame) = &mut self.frame {
                frame.advance(from_frame);
                if frame.is_empty() {
                    self.frame = None;
                }
            }
        }
    }

    /// A body frame as it goes on the wire: as is, or as one chunk.
    fn frame_bytes(&self, data: Bytes) -> Bytes {
        if !self.chunked {
            return data;
        }
        let mut chunk = BytesMut::with_capacity(data.len() + 20);
        chunk.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
        chunk.extend_from_slice(&data);
        chunk.extend_from_slice(b"\r\n");
        chunk.freeze()
    }
}

// === Response head ===

struct Head {
    status: StatusCode,
    version: http::Version,
    headers: HeaderMap,
    keep_alive: bool,
    kind: Kind,
}

enum Parsed {
    Interim,
    Final(Head),
}

/// What a response head's framing headers say, read in one pass over the parsed names.
#[derive(Default)]
struct Framings {
    /// `Connection: close`.
    close: bool,
    /// `Connection: keep-alive`.
    keep_alive: bool,
    /// `Connection` names some other header, which is then hop-by-hop too: the map is built
    /// whole and then given the full strip.
    names_others: bool,
    /// The last token of the last `Transfer-Encoding` value, when there is one.
    transfer_coding: Option<bool>,
    length: Option<u64>,
    /// Why `Content-Length` is unusable (reported only when it decides the framing).
    bad_length: Option<&'static str>,
}

impl Framings {
    fn read(headers: &[httparse::Header<'_>]) -> Self {
        let mut f = Self::default();
        for h in headers {
            let name = h.name.as_bytes();
            if name.eq_ignore_ascii_case(b"connection") {
                for token in h.value.split(|b| *b == b',').map(<[u8]>::trim_ascii) {
                    if token.eq_ignore_ascii_case(b"close") {
                        f.close = true;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") {
                        f.keep_alive = true;
                    } else if !token.is_empty() {
                        f.names_others = true;
                    }
                }
            } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
                let last = h
                    .value
                    .rsplit(|b| *b == b',')
                    .next()
                    .map(<[u8]>::trim_ascii);
                f.transfer_coding = Some(last.is_some_and(|t| t.eq_ignore_ascii_case(b"chunked")));
            } else if name.eq_ignore_ascii_case(b"content-length") {
                let n = std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|s| s.trim().parse::<u64>().ok());
                match (n, f.length) {
                    (None, _) => f.bad_length = Some("content-length"),
                    (Some(n), Some(l)) if l != n => {
                        f.bad_length = Some("conflicting content-length values");
                    }
                    (Some(n), _) => f.length = Some(n),
                }
            }
        }
        f
    }

    fn keep_alive(&self, version: http::Version) -> bool {
        !self.close && (version == http::Version::HTTP_11 || self.keep_alive)
    }

    /// How the response body is delimited (RFC 9112 §6.3).
    fn body_kind(&self, status: StatusCode, head_only: bool) -> Result<Kind, ExchangeError> {
        if head_only || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
            return Ok(Kind::Length(0));
        }
        Ok(match (self.transfer_coding, self.bad_length) {
            (Some(true), _) => Kind::Chunked(Chunk::Size),
            (Some(false), _) => Kind::Eof,
            (None, Some(why)) => return Err(ExchangeError::Invalid(why.into())),
            (None, None) => self.length.map_or(Kind::Eof, Kind::Length),
        })
    }
}

/// Parses a complete head at the front of `buf` and removes it; `None` when incomplete.
///
/// The framing headers are read here, and hop-by-hop headers are left out of the map (when
/// `Connection` names other headers, the map gets the full strip instead): the forwarder need
/// not look for them again.
fn parse_head(buf: &mut BytesMut, head_only: bool) -> Result<Option<Parsed>, ExchangeError> {
    if buf.is_empty() {
        return Ok(None);
    }
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut parsed,
        buf,
        &mut slots,
    ) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(ExchangeError::Invalid(e.to_string())),
    };
    let code = parsed.code.unwrap_or(0);
    let status = StatusCode::from_u16(code)
        .map_err(|_| ExchangeError::Invalid(format!("status code {code}")))?;
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return Err(ExchangeError::Invalid(
            "101 Switching Protocols: upgrades are not proxied".into(),
        ));
    }
    if status.is_informational() {
        buf.advance(len);
        return Ok(Some(Parsed::Interim));
    }
    let version = if parsed.version == Some(0) {
        http::Version::HTTP_10
    } else {
        http::Version::HTTP_11
    };
    let framings = Framings::read(parsed.headers);
    // Where each kept header's name and value sit in the head: the map is built after the
    // head is split off, with values sharing its bytes (one allocation for the head).
    let base = buf.as_ptr() as usize;
    let offset = |s: &[u8]| (s.as_ptr() as usize - base) as u32;
    let mut kept = [[0u32; 4]; MAX_HEADERS];
    let mut n = 0;
    for h in parsed.headers.iter() {
        if !framings.names_others && crate::hop::is_hop_by_hop(h.name.as_bytes()) {
            continue;
        }
        kept[n] = [
            offset(h.name.as_bytes()),
            h.name.len() as u32,
            offset(h.value),
            h.value.len() as u32,
        ];
        n += 1;
    }
    let head = buf.split_to(len).freeze();
    let mut headers = HeaderMap::with_capacity(n);
    for &[name_at, name_len, value_at, value_len] in &kept[..n] {
        let name = &head[name_at as usize..(name_at + name_len) as usize];
        let name = HeaderName::from_bytes(name).map_err(|_| {
            ExchangeError::Invalid(format!("header name {:?}", String::from_utf8_lossy(name)))
        })?;
        let value = head.slice(value_at as usize..(value_at + value_len) as usize);
        let value = HeaderValue::from_maybe_shared(value)
            .map_err(|_| ExchangeError::Invalid(format!("value of header {name}")))?;
        headers.append(name, value);
    }
    if framings.names_others {
        // The rare head whose `Connection` lists more names: stripped here too, so a plain
        // response never carries a hop-by-hop header.
        crate::hop::strip(&mut headers);
    }
    let keep_alive = framings.keep_alive(version);
    let kind = framings.body_kind(status, head_only)?;
    let keep_alive = keep_alive && !matches!(kind, Kind::Eof);
    Ok(Some(Parsed::Final(Head {
        status,
        version,
        headers,
        keep_alive,
        kind,
    })))
}

// === Response body ===

enum Kind {
    /// This many bytes left.
    Length(u64),
    Chunked(Chunk),
    /// Until the upstream closes the connection.
    Eof,
}

#[derive(Clone, Copy)]
enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
    Done,
}

/// The response body of a plain-http exchange. Ends by handing its connection back to the pool
/// (when reusable); dropped before its end, the connection closes.
pub struct PlainBody {
    conn: Option<Conn>,
    kind: Kind,
    reusable: bool,
    pool: Weak<Pool>,
    /// A frame was returned since the last `Pending`.
    yielded: bool,
    /// An error held back for one poll (see `poll_frame`).
    deferred: Option<BodyError>,
}

impl PlainBody {
    fn done(&self) -> bool {
        matches!(self.kind, Kind::Length(0) | Kind::Chunked(Chunk::Done))
    }

    /// At the end of the body: the connection goes back to the pool if it can be reused.
    fn release_if_done(&mut self) {
        if !self.done() {
            return;
        }
        if let Some(mut conn) = self.conn.take() {
            if self.reusable && conn.buf.is_empty() {
                if let Some(pool) = self.pool.upgrade() {
                    conn.timer.forget_waker();
                    pool.checkin(conn);
                }
            }
        }
    }

    fn fail(&mut self, e: BodyError) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.conn = None;
        self.kind = Kind::Length(0);
        Poll::Ready(Some(Err(e)))
    }

    /// The next data frame from what is buffered, if any; advances the chunked state.
    fn take_buffered(&mut self) -> Result<Option<Bytes>, BodyError> {
        let Some(conn) = self.conn.as_mut() else {
            return Ok(None);
        };
        let buf = &mut conn.buf;
        loop {
            match &mut self.kind {
                Kind::Length(0) => return Ok(None),
                Kind::Length(left) => {
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    let n = (*left).min(buf.len() as u64) as usize;
                    *left -= n as u64;
                    return Ok(Some(buf.split_to(n).freeze()));
                }
                Kind::Eof => {
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    return Ok(Some(buf.split().freeze()));
                }
                Kind::Chunked(state) => match *state {
                    Chunk::Done => return Ok(None),
                    Chunk::Size => {
                        let Some(line) = take_line(buf)? else {
                            return Ok(None);
                        };
                        let size = chunk_size(&line)?;
                        *state = if size == 0 {
                            Chunk::Trailers
                        } else {
                            Chunk::Data(size)
                        };
                    }
                    Chunk::Data(left) => {
                        if buf.is_empty() {
                            return Ok(None);
                        }
                        let n = left.min(buf.len() as u64) as usize;
                        *state = if left == n as u64 {
                            Chunk::DataEnd
                        } else {
                            Chunk::Data(left - n as u64)
                        };
                        return Ok(Some(buf.split_to(n).freeze()));
                    }
                    Chunk::DataEnd => {
                        let Some(line) = take_line(buf)? else {
                            return Ok(None);
                        };
                        if !line.is_empty() {
                            return Err(BodyError::Chunked("data longer than its chunk size"));
                        }
                        *state = Chunk::Size;
                    }
                    Chunk::Trailers => {
                        let Some(line) = take_line(buf)? else {
                            return Ok(None);
                        };
                        if line.is_empty() {
                            *state = Chunk::Done;
                        }
                    }
                },
            }
        }
    }
}

/// One CRLF- (or LF-) terminated line from the front of `buf`, without its terminator.
fn take_line(buf: &mut BytesMut) -> Result<Option<BytesMut>, BodyError> {
    let Some(end) = buf.iter().position(|&b| b == b'\n') else {
        if buf.len() > MAX_LINE {
            return Err(BodyError::Chunked("line too long"));
        }
        return Ok(None);
    };
    let mut line = buf.split_to(end + 1);
    line.truncate(end);
    if line.last() == Some(&b'\r') {
        line.truncate(end - 1);
    }
    Ok(Some(line))
}

/// A chunk-size line: hex digits, then optional extensions after `;`.
fn chunk_size(line: &[u8]) -> Result<u64, BodyError> {
    let digits = line
        .split(|&b| b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    if digits.is_empty() || digits.len() > 15 {
        return Err(BodyError::Chunked("bad chunk size"));
    }
    let mut size = 0u64;
    for &d in digits {
        let v = (d as char)
            .to_digit(16)
            .ok_or(BodyError::Chunked("bad chunk size"))?;
        size = size * 16 + u64::from(v);
    }
    Ok(size)
}

/// Reads what the socket has into the connection's buffer.
fn poll_read(conn: &mut Conn, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
    if conn.buf.capacity() - conn.buf.len() < READ_CHUNK / 4 {
        conn.buf.reserve(READ_CHUNK);
    }
    tokio_util::io::poll_read_buf(Pin::new(&mut conn.io), cx, &mut conn.buf)
}

impl Body for PlainBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        if let Some(e) = this.deferred.take() {
            return this.fail(e);
        }
        let polled = this.poll_next(cx);
        match &polled {
            Poll::Pending => this.yielded = false,
            Poll::Ready(Some(Ok(_))) => this.yielded = true,
            // Frames returned in this same turn may still sit unsent in the server's buffer,
            // and a server connection whose body fails is closed without sending them: the
            // error waits for one more poll, after the server has written what came before.
            Poll::Ready(Some(Err(_))) if this.yielded => {
                if let Poll::Ready(Some(Err(e))) = polled {
                    this.deferred = Some(e);
                }
                this.yielded = false;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            Poll::Ready(_) => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.done() && self.deferred.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match self.kind {
            Kind::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

impl PlainBody {
    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        loop {
            match self.take_buffered() {
                Ok(Some(data)) => {
                    self.release_if_done();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(None) if self.done() => {
                    self.release_if_done();
                    return Poll::Ready(None);
                }
                Ok(None) => {}
                Err(e) => return self.fail(e),
            }
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match ready!(poll_read(conn, cx)) {
                Ok(0) => {
                    if matches!(self.kind, Kind::Eof) {
                        self.conn = None;
                        self.kind = Kind::Length(0);
                        return Poll::Ready(None);
                    }
                    return self.fail(BodyError::Incomplete);
                }
                Ok(_) => {}
                Err(e) => return self.fail(BodyError::Read(e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Result<Option<Parsed>, ExchangeError> {
        let mut buf = BytesMut::from(text.as_bytes());
        parse_head(&mut buf, false)
    }

    fn final_head(text: &str) -> Head {
        match head(text) {
            Ok(Some(Parsed::Final(h))) => h,
            Ok(Some(Parsed::Interim)) => panic!("interim: {text}"),
            Ok(None) => panic!("incomplete: {text}"),
            Err(e) => panic!("{e}: {text}"),
        }
    }

    #[test]
    fn chunk_sizes_are_hex_with_optional_extensions() {
        assert_eq!(chunk_size(b"1a").ok(), Some(26));
        assert_eq!(chunk_size(b"1A;name=value").ok(), Some(26));
        assert_eq!(chunk_size(b"0").ok(), Some(0));
        assert_eq!(chunk_size(b" 10 ").ok(), Some(16));
        assert!(chunk_size(b"").is_err());
        assert!(chunk_size(b"xyz").is_err());
        assert!(
            chunk_size(b"1000000000000000").is_err(),
            "more than 15 hex digits"
        );
    }

    #[test]
    fn lines_end_at_lf_with_or_without_cr() {
        let mut buf = BytesMut::from(&b"abc\r\ndef\nrest"[..]);
        assert_eq!(
            take_line(&mut buf).ok().flatten().as_deref(),
            Some(&b"abc"[..])
        );
        assert_eq!(
            take_line(&mut buf).ok().flatten().as_deref(),
            Some(&b"def"[..])
        );
        assert_eq!(
            take_line(&mut buf).ok().flatten(),
            None,
            "no terminator yet"
        );
        assert_eq!(&buf[..], b"rest");
        let mut long = BytesMut::from(&vec![b'1'; MAX_LINE + 1][..]);
        assert!(take_line(&mut long).is_err(), "an endless line is refused");
    }

    #[test]
    fn the_body_length_follows_rfc_9112() {
        let chunked = final_head("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n");
        assert!(matches!(chunked.kind, Kind::Chunked(Chunk::Size)));
        assert!(chunked.keep_alive);
        let length = final_head("HTTP/1.1 200 OK\r\ncontent-length: 12\r\n\r\n");
        assert!(matches!(length.kind, Kind::Length(12)));
        let eof = final_head("HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\n");
        assert!(matches!(eof.kind, Kind::Eof));
        assert!(
            !eof.keep_alive,
            "a body delimited by close ends the connection"
        );
        let not_chunked = final_head("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n");
        assert!(matches!(not_chunked.kind, Kind::Eof));
        let no_content = final_head("HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\n");
        assert!(matches!(no_content.kind, Kind::Length(0)));
        let close = final_head("HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        assert!(!close.keep_alive);
        let old = final_head("HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n");
        assert!(!old.keep_alive, "HTTP/1.0 without keep-alive closes");
        let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n"[..]);
        match parse_head(&mut buf, true) {
            Ok(Some(Parsed::Final(h))) => assert!(matches!(h.kind, Kind::Length(0)), "HEAD"),
            _ => panic!("a HEAD answer parses"),
        }
    }

    #[test]
    fn bad_heads_are_refused_with_the_reason() {
        let conflict = head("HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n");
        assert!(matches!(conflict, Err(ExchangeError::Invalid(m)) if m.contains("content-length")));
        let upgrade = head("HTTP/1.1 101 Switching Protocols\r\n\r\n");
        assert!(matches!(upgrade, Err(ExchangeError::Invalid(m)) if m.contains("upgrade")));
        assert!(head("HTTP/1.1 2000 Nope\r\n\r\n").is_err());
        let many: String = (0..=MAX_HEADERS).map(|i| format!("x-{i}: v\r\n")).collect();
        assert!(head(&format!("HTTP/1.1 200 OK\r\n{many}\r\n")).is_err());
        assert!(
            matches!(head("HTTP/1.1 200 OK\r\ncontent-le"), Ok(None)),
            "incomplete"
        );
    }

    #[test]
    fn hop_by_hop_headers_never_reach_the_map() {
        let h = final_head(
            "HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\
             Transfer-Encoding: chunked\r\nServer: up\r\n\r\n",
        );
        assert!(
            matches!(h.kind, Kind::Chunked(Chunk::Size)),
            "framing still read"
        );
        let names: Vec<_> = h.headers.keys().map(|n| n.as_str()).collect();
        assert_eq!(names, ["server"], "hop-by-hop headers are not in the map");
        let h = final_head(
            "HTTP/1.1 200 OK\r\nconnection: close, x-hop\r\nx-hop: 1\r\ncontent-length: 0\r\n\r\n",
        );
        assert!(!h.keep_alive);
        let names: Vec<_> = h.headers.keys().map(|n| n.as_str()).collect();
        assert_eq!(
            names,
            ["content-length"],
            "a header named in Connection is hop-by-hop too"
        );
        let h = final_head(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: nope\r\n\r\n",
        );
        assert!(
            matches!(h.kind, Kind::Chunked(_)),
            "Transfer-Encoding overrides a bad Content-Length"
        );
    }

    #[test]
    fn interim_heads_are_skipped_and_values_share_the_head() {
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nx-a: 1\r\nx-a: 2\r\ncontent-length: 2\r\n\r\nok"[..],
        );
        assert!(matches!(
            parse_head(&mut buf, false),
            Ok(Some(Parsed::Interim))
        ));
        let Ok(Some(Parsed::Final(h))) = parse_head(&mut buf, false) else {
            panic!("the final head follows");
        };
        assert_eq!(h.status, StatusCode::OK);
        let values: Vec<_> = h.headers.get_all("x-a").iter().collect();
        assert_eq!(
            values,
            ["1", "2"],
            "repeated headers are all kept, in order"
        );
        assert_eq!(&buf[..], b"ok", "the body's bytes stay for the body");
    }
}

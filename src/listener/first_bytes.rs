//! First bytes: a new connection has `header_read_timeout_ms` to show which HTTP it speaks.
//!
//! hyper's header-read timeout (HTTP/1) starts only once hyper-util's auto builder has read
//! enough of the connection to tell HTTP/1 from HTTP/2 (the first byte that differs from the
//! HTTP/2 preface, or the whole 24-byte preface). Until then nothing timed it: a client that
//! connected and sent nothing, or only the start of the preface (`PRI * HTTP/2`), held a
//! connection slot (`max_connections`) until shutdown. [`FirstBytesDeadline`] wraps the
//! connection's stream and fails its reads with `TimedOut` once the timeout has passed while
//! every byte read so far is still a prefix of the HTTP/2 preface. From the first byte that is
//! not (an HTTP/1 request) hyper's own header-read timer takes over, so an HTTP/1 client gets the
//! timeout for its first bytes and then the timeout again for the rest of its head. After a whole
//! preface nothing times an HTTP/2 connection: hyper's HTTP/2 server has no idle or first-request
//! timeout (a gap left open; bench/RESULTS.md, session 24).

use std::{
    future::Future,
    io,
    pin::Pin,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::deadline::Deadline;

/// What an HTTP/2 client sends first (RFC 9113 §3.4); hyper-util reads up to all of it.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A stream whose reads fail with `TimedOut` if its first bytes have not told the protocol apart
/// by a deadline (see the module doc). Writes pass through.
pub struct FirstBytesDeadline<I> {
    inner: I,
    /// While undecided: when the first bytes must have come, and the timer for it (made on the
    /// first read that has to wait). `None` once decided.
    pending: Option<Undecided>,
}

struct Undecided {
    due: Instant,
    timer: Option<Deadline>,
    /// How many bytes read so far, all equal to the preface's first ones.
    matched: usize,
}

impl<I> FirstBytesDeadline<I> {
    /// `timeout` from now (the connection's accept, or the end of its TLS handshake).
    pub fn new(inner: I, timeout: Duration) -> Self {
        Self {
            inner,
            pending: Some(Undecided {
                due: tokio::time::Instant::now().into_std() + timeout,
                timer: None,
                matched: 0,
            }),
        }
    }
}

impl Undecided {
    /// Takes in newly read bytes; true once they tell the protocol apart (or end the stream).
    fn decided_by(&mut self, new: &[u8]) -> bool {
        if new.is_empty() {
            return true; // end of stream: hyper ends the connection
        }
        let rest = &H2_PREFACE[self.matched..];
        let n = new.len().min(rest.len());
        if new[..n] != rest[..n] {
            return true; // not HTTP/2: HTTP/1, whose head hyper times
        }
        self.matched += n;
        self.matched == H2_PREFACE.len()
    }

    /// Whether the deadline has passed; if not, the task is woken when it does.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let due = self.due;
        let timer = self.timer.get_or_insert_with(|| Deadline::new(due));
        Pin::new(timer).poll(cx).is_ready()
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for FirstBytesDeadline<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let Some(undecided) = &mut this.pending else {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        };
        if buf.remaining() == 0 {
            // Nothing can be read into a full buffer, and its empty read is not an end of stream.
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if undecided.decided_by(&buf.filled()[before..]) {
                    this.pending = None;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending if undecided.expired(cx) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no request within header_read_timeout_ms of connecting",
            ))),
            other => other,
        }
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for FirstBytesDeadline<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http1_bytes_decide_at_the_first_difference_and_h2_at_the_whole_preface() {
        let fresh = || Undecided {
            due: Instant::now(),
            timer: None,
            matched: 0,
        };
        let mut post = fresh();
        assert!(!post.decided_by(b"P"), "P could still be the preface");
        assert!(post.decided_by(b"OST /v1/chat"), "POST is HTTP/1");

        let mut get = fresh();
        assert!(get.decided_by(b"GET / HTTP/1.1\r\n"));

        let mut h2 = fresh();
        assert!(!h2.decided_by(b"PRI * HTTP/2"), "a prefix only");
        assert!(!h2.decided_by(b".0\r\n\r\nSM\r\n"));
        assert!(
            h2.decided_by(b"\r\nframes after the preface"),
            "the whole preface"
        );

        let mut eof = fresh();
        assert!(eof.decided_by(b""), "end of stream");
    }
}

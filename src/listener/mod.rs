//! Listener: binds TCP, prints the bound address, serves hyper connections (HTTP/1.1 keep-alive
//! and HTTP/2, auto-detected), optionally over TLS (rustls, ALPN h2 + http/1.1), at most
//! `max_connections` at once, and shuts down gracefully. Generic over the service, so both the
//! proxy and the admin port use it. The only module that holds server TLS.

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpListener,
    sync::{watch, Semaphore},
};
use tokio_rustls::TlsAcceptor;

use crate::{config::TlsFiles, error::StartError};

mod drain;
mod first_bytes;
mod head_timer;

use drain::{Drain, Tracked};
use first_bytes::FirstBytesDeadline;
use head_timer::HeadTimer;

/// Largest request head (request line + headers) a client may send over HTTP/1.1.
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// A client gets this long to finish its TLS handshake (each on its own task, so a stalled or
/// failing handshake never holds up other connections).
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How a listener serves its connections.
#[derive(Clone)]
pub struct ServeOptions {
    /// In-flight connections get this long to finish at shutdown.
    pub grace: Duration,
    /// `Some`: every connection is TLS.
    pub tls: Option<TlsAcceptor>,
    /// Connections served at once; further ones wait in the kernel's accept queue (the backlog),
    /// so memory stays bounded however many clients connect.
    pub max_connections: usize,
    /// A slow client gets this long to send its first bytes (which tell HTTP/1 from HTTP/2), and
    /// then, over HTTP/1.1, this long again for the rest of each request head; then it is closed.
    pub header_read_timeout: Duration,
}

/// Loads a listener's certificate chain and private key (PEM) into a TLS acceptor that offers
/// ALPN `h2` and `http/1.1`. Errors name the config key.
pub fn tls_acceptor(files: &TlsFiles) -> Result<TlsAcceptor, StartError> {
    let certs = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| StartError::Tls {
            key: files.cert_key.to_string(),
            message: format!("{}: {e}", files.cert.display()),
        })?;
    if certs.is_empty() {
        return Err(StartError::Tls {
            key: files.cert_key.to_string(),
            message: format!("{}: no PEM certificate found", files.cert.display()),
        });
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| StartError::Tls {
        key: files.key_key.to_string(),
        message: format!("{}: no usable PEM private key: {e}", files.key.display()),
    })?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| StartError::Tls {
        key: files.cert_key.to_string(),
        message: e.to_string(),
    })?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| StartError::Tls {
        key: files.key_key.to_string(),
        message: format!(
            "{} does not fit {}: {e}",
            files.key.display(),
            files.cert.display()
        ),
    })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Binds `addr` for the listener named by config `key` and prints the bound address
/// (`https://` when the listener serves TLS).
pub async fn bind(
    key: &'static str,
    addr: SocketAddr,
    tls: bool,
) -> Result<TcpListener, StartError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { key, addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| StartError::Bind { key, addr, source })?;
    let label = if key == "listen" { "proxy" } else { "admin" };
    let scheme = if tls { "https" } else { "http" };
    #[allow(clippy::print_stdout)] // stdout carries exactly the two "listening on" lines
    {
        println!("{label} listening on {scheme}://{local}");
    }
    tracing::info!(%local, "{label} listening");
    Ok(listener)
}

/// Serves until `stop` turns true, then stops accepting and gives in-flight connections up to
/// `grace` to finish. Connections still open after that are dropped (their calls are recorded as
/// cancelled), so shutdown is bounded by `grace`.
pub async fn serve<S, B>(
    listener: TcpListener,
    service: S,
    mut stop: watch::Receiver<bool>,
    opts: ServeOptions,
) where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let drain = Drain::new();
    let mut http = auto::Builder::new(TokioExecutor::new());
    http.http1()
        .timer(HeadTimer)
        .header_read_timeout(opts.header_read_timeout)
        // Bounds each connection's head buffer (hyper's default is ~400 KiB): a head larger than
        // this is refused (431, or 414 for the URI) instead of buffered.
        .max_buf_size(MAX_HEAD_BYTES)
        .keep_alive(true);
    // HTTP/2 gets the same head bound as HTTP/1 (hyper's h2 default is 16 KiB): a header list
    // over it is answered 431 by h2 and the stream reset; CONTINUATION floods and rapid resets
    // are bounded by h2 itself (it sends GOAWAY). `tests/hostile.rs` covers all three.
    http.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_HEAD_BYTES as u32);
    let grace = opts.grace;
    let slots = Arc::new(Semaphore::new(opts.max_connections.max(1)));
    let mut full_logged = false;
    loop {
        // A free connection slot first: at the limit, new clients wait in the backlog.
        let permit = if slots.available_permits() > 0 {
            full_logged = false;
            slots.clone().acquire_owned().await
        } else {
            if !full_logged {
                full_logged = true;
                tracing::warn!(
                    max_connections = opts.max_connections,
                    "max_connections reached; new connections wait until one closes"
                );
            }
            tokio::select! {
                permit = slots.clone().acquire_owned() => permit,
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() {
                        break;
                    }
                    continue;
                }
            }
        };
        let Ok(permit) = permit else { break }; // the semaphore is never closed
        tokio::select! {
            accepted = listener.accept() => {
                let (tcp, peer) = match accepted {
                    Ok(conn) => conn,
                    Err(e) => {
                        // EMFILE and friends: keep accepting, but don't spin.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true); // Nagle + delayed ACK would stall multi-write responses
                let mut tracked = drain.track();
                let http = http.clone();
                let service = service.clone();
                let tls = opts.tls.clone();
                let first_bytes_timeout = opts.header_read_timeout;
                tokio::spawn(async move {
                    let _permit = permit;
                    match tls {
                        None => run_connection(&http, tcp, first_bytes_timeout, service, &mut tracked, peer).await,
                        Some(acceptor) => {
                            let handshake = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp));
                            // A drain lets the handshake finish (the connection then closes after
                            // at most one request); an abort drops it.
                            let tls_stream = match tracked.run(handshake, |_| {}).await {
                                Some(Ok(Ok(s))) => s,
                                Some(Ok(Err(e))) => {
                                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                    return;
                                }
                                Some(Err(_)) => {
                                    tracing::debug!(%peer, "TLS handshake timed out");
                                    return;
                                }
                                None => return,
                            };
                            run_connection(&http, tls_stream, first_bytes_timeout, service, &mut tracked, peer).await;
                        }
                    }
                });
            }
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    break;
                }
            }
        }
    }
    drop(listener);
    if !drain.shutdown(grace).await {
        tracing::warn!(
            ?grace,
            "dropping connections still open after the shutdown grace period"
        );
    }
}

/// Serves one accepted connection (plain or TLS) until it ends, shutdown asks it to, or the
/// grace period runs out. Its first bytes must come within `first_bytes_timeout` (see
/// `first_bytes`).
async fn run_connection<I, S, B>(
    http: &auto::Builder<TokioExecutor>,
    stream: I,
    first_bytes_timeout: Duration,
    service: S,
    tracked: &mut Tracked,
    peer: SocketAddr,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let io = TokioIo::new(FirstBytesDeadline::new(stream, first_bytes_timeout));
    let conn = http.serve_connection(io, service);
    match tracked.run(conn, |conn| conn.graceful_shutdown()).await {
        Some(Ok(())) => {}
        Some(Err(e)) => tracing::debug!(%peer, error = %e, "connection ended with an error"),
        None => {
            tracing::debug!(%peer, "connection dropped at the end of the shutdown grace period");
        }
    }
}

//! Upstream: the client that sends a route's requests to its upstream, one per route.
//!
//! - `http://` upstreams: a pool of HTTP/1.1 connections of our own, each exchange run inline
//!   by the task that asked for it (`h1`). A connection goes back to the pool when its response
//!   body ends (the body carries it), so a request costs a mutex pop and push and no task
//!   wake-ups of its own: not hyper-util's keyed pool checkout, its per-request boxing and the
//!   task it spawns per response, nor hyper's per-connection task and channels (bench/RESULTS.md).
//! - `https://` upstreams: hyper-util's pooled client (rustls, ALPN h2 / http1.1), unchanged.
//!
//! The only module that imports the upstream client crates (hyper-util's client, hyper-rustls).

use std::{
    collections::VecDeque,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{Arc, Mutex, PoisonError, Weak},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client as PooledClient},
    rt::{TokioExecutor, TokioTimer},
};
use rustls_pki_types::{pem::PemObject, CertificateDer};

use crate::{config::RouteConfig, error::StartError, tap::TapBody};

mod h1;
use h1::Conn;
pub use h1::{BodyError, PlainBody};

/// What the proxy sends upstream: the app's body, tapped.
pub type RequestBody = TapBody<Incoming>;

/// Idle upstream connections kept per route. Bounds the pool after a burst (each idle
/// connection holds its buffers), and stays above the concurrency a single host usually sees.
const MAX_IDLE: usize = 256;

/// An idle connection unused this long is closed (as hyper-util's pool does).
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// At checkout, at most this many pooled connections are looked at (and closed ones dropped)
/// before a new one is opened.
const CHECKOUT_SCAN: usize = 8;

/// Why a request got no response head.
#[derive(Debug)]
pub enum SendError {
    /// Connecting, writing or reading failed; the message says how.
    Failed(String),
    /// No response head by the deadline.
    TimedOut,
}

/// One route's client.
pub enum Client {
    Plain(Arc<Pool>),
    /// Boxed: one per route, and the plain variant is a pointer.
    Tls(Box<PooledClient<HttpsConnector<HttpConnector>, RequestBody>>),
}

impl Client {
    /// One client per route: plain http gets our HTTP/1.1 pool; https gets rustls (webpki roots
    /// + the route's `ca_file`), ALPN h2/http1.1. TCP_NODELAY and keepalive either way.
    pub fn new(
        index: usize,
        route: &RouteConfig,
        connect_timeout: Duration,
    ) -> Result<Self, StartError> {
        if route.upstream.scheme() == Some(&http::uri::Scheme::HTTP) {
            let authority = route.upstream.authority();
            let host = authority.map_or("localhost", |a| a.host());
            // `[::1]` in a URI is `::1` to the resolver.
            let host = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            let port = authority.and_then(|a| a.port_u16()).unwrap_or(80);
            // Still built: it validates the route's TLS keys (`ca_file`) as before.
            tls_client(index, route, connect_timeout)?;
            return Ok(Self::Plain(Pool::new(host, port, connect_timeout)));
        }
        Ok(Self::Tls(Box::new(tls_client(
            index,
            route,
            connect_timeout,
        )?)))
    }

    /// Sends `req` (an absolute URI) and waits for the response head until `deadline`.
    pub async fn send(
        &self,
        req: Request<RequestBody>,
        deadline: Instant,
    ) -> Result<Response<UpstreamBody>, SendError> {
        match self {
            Client::Plain(pool) => pool.send(req, deadline).await,
            Client::Tls(client) => {
                match tokio::time::timeout_at(deadline.into(), client.request(req)).await {
                    Ok(Ok(rsp)) => Ok(rsp.map(UpstreamBody::Pooled)),
                    Ok(Err(e)) => Err(SendError::Failed(error_chain(&e))),
                    Err(_) => Err(SendError::TimedOut),
                }
            }
        }
    }
}

// === Pool ===

/// Idle HTTP/1.1 connections to one `host:port`, most recently used last.
pub struct Pool {
    host: String,
    port: u16,
    connect_timeout: Duration,
    idle: Mutex<VecDeque<(Conn, Instant)>>,
    me: Weak<Pool>,
}

impl Pool {
    fn new(host: String, port: u16, connect_timeout: Duration) -> Arc<Self> {
        let pool = Arc::new_cyclic(|me| Self {
            host,
            port,
            connect_timeout,
            idle: Mutex::new(VecDeque::new()),
            me: me.clone(),
        });
        // Closes connections idle past IDLE_TIMEOUT even when no request comes to do it; ends
        // with the pool. Only where a runtime runs (config tests build clients without one).
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let weak = Arc::downgrade(&pool);
            rt.spawn(async move {
                let mut tick = tokio::time::interval(IDLE_TIMEOUT / 3);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let Some(pool) = weak.upgrade() else { return };
                    pool.expire(Instant::now());
                }
            });
        }
        pool
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<(Conn, Instant)>> {
        // Plain data: a panic elsewhere cannot leave it inconsistent.
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Drops connections idle for longer than IDLE_TIMEOUT, and ones the upstream closed.
    fn expire(&self, now: Instant) {
        self.lock()
            .retain(|(conn, at)| now.duration_since(*at) <= IDLE_TIMEOUT && conn.is_usable());
    }

    /// The most recently used idle connection the upstream has not closed, if any.
    fn checkout(&self) -> Option<Conn> {
        let mut idle = self.lock();
        for _ in 0..CHECKOUT_SCAN {
            let (conn, _) = idle.pop_back()?;
            if conn.is_usable() {
                return Some(conn);
            }
        }
        None
    }

    /// A connection whose exchange completed goes back for the next call.
    fn checkin(&self, conn: Conn) {
        let mut idle = self.lock();
        if idle.len() >= MAX_IDLE {
            idle.pop_front(); // the least recently used one closes
        }
        idle.push_back((conn, Instant::now()));
    }

    /// The deadline is watched by each connection's own timer, re-armed per exchange: a
    /// `tokio::time::timeout` per request registered and removed a timer-wheel entry under
    /// the driver's lock each time (~1,100 instructions per request, bench/RESULTS.md).
    async fn send(
        &self,
        mut req: Request<RequestBody>,
        deadline: Instant,
    ) -> Result<Response<UpstreamBody>, SendError> {
        // Pooled connections first. One that turns out closed before any of the request
        // reached it hands the request back, and the next is tried: bounded by the scan.
        for _ in 0..CHECKOUT_SCAN {
            let Some(conn) = self.checkout() else {
                break;
            };
            match h1::exchange(conn, req, self.me.clone(), deadline).await {
                Ok(rsp) => return Ok(rsp.map(UpstreamBody::Plain)),
                Err(Ok(unsent)) => req = unsent.req,
                Err(Err(e)) => return Err(exchange_error(&e)),
            }
        }
        let conn = self.connect(deadline).await?;
        match h1::exchange(conn, req, self.me.clone(), deadline).await {
            Ok(rsp) => Ok(rsp.map(UpstreamBody::Plain)),
            Err(Ok(_)) => Err(SendError::Failed(
                h1::ExchangeError::ClosedBeforeHead.to_string(),
            )),
            Err(Err(e)) => Err(exchange_error(&e)),
        }
    }

    /// Opens a new connection (resolving the host if it is a name), bounded by the connect
    /// timeout and the response deadline.
    async fn connect(&self, deadline: Instant) -> Result<Conn, SendError> {
        let connect_by = Instant::now()
            .checked_add(self.connect_timeout)
            .map_or(deadline, |t| t.min(deadline));
        let connected = tokio::time::timeout_at(connect_by.into(), self.tcp()).await;
        let tcp = match connected {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(e)) => return Err(SendError::Failed(format!("tcp connect error: {e}"))),
            Err(_) if connect_by == deadline => return Err(SendError::TimedOut),
            Err(_) => {
                return Err(SendError::Failed(format!(
                    "tcp connect error: timed out after {:?}",
                    self.connect_timeout
                )))
            }
        };
        let _ = tcp.set_nodelay(true);
        let keepalive = socket2::TcpKeepalive::new().with_time(Duration::from_secs(60));
        let _ = socket2::SockRef::from(&tcp).set_tcp_keepalive(&keepalive);
        Ok(Conn::new(tcp, deadline))
    }

    async fn tcp(&self) -> std::io::Result<tokio::net::TcpStream> {
        if let Ok(ip) = self.host.parse::<IpAddr>() {
            return tokio::net::TcpStream::connect(SocketAddr::new(ip, self.port)).await;
        }
        let mut last = None;
        for addr in tokio::net::lookup_host((self.host.as_str(), self.port)).await? {
            match tokio::net::TcpStream::connect(addr).await {
                Ok(tcp) => return Ok(tcp),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::NotFound, "dns error: no addresses")
        }))
    }
}

fn exchange_error(e: &h1::ExchangeError) -> SendError {
    match e {
        h1::ExchangeError::TimedOut => SendError::TimedOut,
        e => SendError::Failed(error_chain(e)),
    }
}

// === UpstreamBody ===

/// The upstream's response body: from a plain-http exchange (which hands its connection back
/// to the pool at its end), or from hyper-util's pooled https client.
pub enum UpstreamBody {
    Plain(PlainBody),
    Pooled(Incoming),
}

/// A body read error from either client.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamBodyError {
    #[error(transparent)]
    Plain(#[from] BodyError),
    #[error(transparent)]
    Pooled(#[from] hyper::Error),
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = UpstreamBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamBodyError>>> {
        match self.get_mut() {
            UpstreamBody::Plain(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            UpstreamBody::Pooled(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Plain(b) => b.is_end_stream(),
            UpstreamBody::Pooled(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Plain(b) => b.size_hint(),
            UpstreamBody::Pooled(b) => b.size_hint(),
        }
    }
}

// === TLS client ===

/// hyper-util's pooled client for an https route: rustls (webpki roots + the route's `ca_file`),
/// ALPN h2/http1.1, TCP_NODELAY.
fn tls_client(
    index: usize,
    route: &RouteConfig,
    connect_timeout: Duration,
) -> Result<PooledClient<HttpsConnector<HttpConnector>, RequestBody>, StartError> {
    let key = if route.prefix == "/" {
        "ca_file".to_string()
    } else {
        format!("route[{index}].ca_file")
    };
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = &route.ca_file {
        let bad = |e: &dyn std::fmt::Display| StartError::Tls {
            key: key.clone(),
            message: format!("{}: {e}", path.display()),
        };
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| bad(&e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(&e))?;
        if certs.is_empty() {
            return Err(bad(&"no PEM certificates found"));
        }
        for cert in certs {
            roots.add(cert).map_err(|e| bad(&e))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| StartError::Tls {
            key: key.clone(),
            message: e.to_string(),
        })?;
    let tls = if route.insecure_skip_verify {
        let key = if route.prefix == "/" {
            "insecure_skip_verify".to_string()
        } else {
            format!("route[{index}].insecure_skip_verify")
        };
        // Loud on purpose, once per route: anyone on the path can read and change this traffic.
        tracing::warn!(
            route = %route.prefix,
            upstream = %route.upstream,
            key = %key,
            "TLS certificate verification is OFF for this route's upstream: any certificate is \
             accepted, so the connection can be intercepted (prompts, answers and API keys)"
        );
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(SkipVerify(provider)))
            .with_no_client_auth()
    } else {
        builder.with_root_certificates(roots).with_no_client_auth()
    };

    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(60)));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Ok(PooledClient::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(MAX_IDLE)
        .build(https))
}

/// `insecure_skip_verify`: accepts any certificate chain and name, but still checks that the
/// handshake is signed by the presented certificate's key (so the session is at least bound to
/// it).
#[derive(Debug)]
struct SkipVerify(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for SkipVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The error and its causes, e.g. "client error (Connect): tcp connect error: Connection refused".
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_chain_includes_causes_once() {
        let inner =
            std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "Connection refused");
        let outer = std::io::Error::other(inner);
        assert_eq!(error_chain(&outer), "Connection refused");
    }
}

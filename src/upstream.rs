//! Upstream: the client that sends a route's requests to its upstream, one per route.
//!
//! - `http://` upstreams: a pool of HTTP/1.1 connections of our own over hyper's
//!   `client::conn::http1`. A connection goes back to the pool when its response body ends (the
//!   body carries it), so a request costs a mutex pop and push, not hyper-util's keyed pool
//!   checkout, its per-request boxing and the task it spawns per response to watch for the
//!   connection's return (about a sixth of the proxy's instructions per request; bench/RESULTS.md).
//! - `https://` upstreams: hyper-util's pooled client (rustls, ALPN h2 / http1.1), unchanged.
//!
//! The only module that imports the upstream client crates (hyper-util's client, hyper-rustls).

use std::{
    collections::VecDeque,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{Arc, Mutex, PoisonError, Weak},
    task::{ready, Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{uri::PathAndQuery, Method, Request, Response, Uri};
use hyper::{
    body::{Body, Frame, Incoming, SizeHint},
    client::conn::http1,
};
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client as PooledClient},
    rt::{TokioExecutor, TokioIo, TokioTimer},
};
use rustls_pki_types::{pem::PemObject, CertificateDer};

use crate::{config::RouteConfig, error::StartError, tap::TapBody};

/// What the proxy sends upstream: the app's body, tapped.
pub type RequestBody = TapBody<Incoming>;

/// Idle upstream connections kept per route. Bounds the pool after a burst (each idle
/// connection holds its buffers), and stays above the concurrency a single host usually sees.
const MAX_IDLE: usize = 256;

/// An idle connection unused this long is closed (as hyper-util's pool does).
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// At checkout, at most this many pooled connections are looked at before a new one is opened
/// (one may still be finishing its previous exchange, e.g. an upload the upstream never read).
const CHECKOUT_SCAN: usize = 8;

/// Why a request got no response head.
#[derive(Debug)]
pub struct SendError(pub String);

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

    /// Sends `req` (an absolute URI) and waits for the response head.
    pub async fn send(
        &self,
        req: Request<RequestBody>,
    ) -> Result<Response<UpstreamBody>, SendError> {
        match self {
            Client::Plain(pool) => pool.send(req).await,
            Client::Tls(client) => match client.request(req).await {
                Ok(rsp) => Ok(rsp.map(|inner| UpstreamBody {
                    inner,
                    checkin: None,
                })),
                Err(e) => Err(SendError(error_chain(&e))),
            },
        }
    }
}

// === Pool ===

/// Idle HTTP/1.1 connections to one `host:port`, most recently used last.
pub struct Pool {
    host: String,
    port: u16,
    connect_timeout: Duration,
    idle: Mutex<VecDeque<(http1::SendRequest<RequestBody>, Instant)>>,
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

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, VecDeque<(http1::SendRequest<RequestBody>, Instant)>> {
        // Plain data: a panic elsewhere cannot leave it inconsistent.
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Drops connections idle for longer than IDLE_TIMEOUT (the oldest are at the front).
    fn expire(&self, now: Instant) {
        let mut idle = self.lock();
        while idle
            .front()
            .is_some_and(|(s, at)| s.is_closed() || now.duration_since(*at) > IDLE_TIMEOUT)
        {
            idle.pop_front();
        }
    }

    /// The most recently used connection that can take a request now, if any.
    fn checkout(&self) -> Option<http1::SendRequest<RequestBody>> {
        let mut idle = self.lock();
        let mut busy = 0;
        let mut found = None;
        for _ in 0..CHECKOUT_SCAN {
            let Some((sender, at)) = idle.pop_back() else {
                break;
            };
            if sender.is_closed() {
                continue;
            }
            if sender.is_ready() {
                found = Some(sender);
                break;
            }
            // Still finishing its last exchange: keep it, oldest end, for a later call.
            idle.push_front((sender, at));
            busy += 1;
            if busy >= idle.len() {
                break;
            }
        }
        found
    }

    /// A connection whose response body ended goes back for the next call.
    fn checkin(&self, sender: http1::SendRequest<RequestBody>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.lock();
        if idle.len() >= MAX_IDLE {
            idle.pop_front(); // the least recently used one closes
        }
        idle.push_back((sender, Instant::now()));
    }

    async fn send(
        &self,
        mut req: Request<RequestBody>,
    ) -> Result<Response<UpstreamBody>, SendError> {
        origin_form(&mut req);
        // Pooled connections first. One that turns out closed hands the request back unsent
        // (hyper's `try_send_request`), and the next is tried: bounded by the scan.
        for _ in 0..CHECKOUT_SCAN {
            let Some(mut sender) = self.checkout() else {
                break;
            };
            match sender.try_send_request(req).await {
                Ok(rsp) => return Ok(self.wrap(rsp, sender)),
                Err(mut e) => match e.take_message() {
                    Some(unsent) => req = unsent,
                    None => return Err(SendError(error_chain(&e.into_error()))),
                },
            }
        }
        let mut sender = self.connect().await?;
        match sender.try_send_request(req).await {
            Ok(rsp) => Ok(self.wrap(rsp, sender)),
            Err(e) => Err(SendError(error_chain(&e.into_error()))),
        }
    }

    /// The response, carrying its connection back to the pool at the end of its body.
    fn wrap(
        &self,
        rsp: Response<Incoming>,
        sender: http1::SendRequest<RequestBody>,
    ) -> Response<UpstreamBody> {
        let checkin = self.me.upgrade().map(|pool| Checkin { pool, sender });
        rsp.map(|inner| {
            let mut body = UpstreamBody { inner, checkin };
            if body.inner.is_end_stream() {
                body.release(); // no body to wait for (HEAD, 204, 304, Content-Length: 0)
            }
            body
        })
    }

    /// Opens a new connection (resolving the host if it is a name), bounded by the connect
    /// timeout, and starts its task.
    async fn connect(&self) -> Result<http1::SendRequest<RequestBody>, SendError> {
        let connected = tokio::time::timeout(self.connect_timeout, self.tcp()).await;
        let tcp = match connected {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(e)) => return Err(SendError(format!("tcp connect error: {e}"))),
            Err(_) => {
                return Err(SendError(format!(
                    "tcp connect error: timed out after {:?}",
                    self.connect_timeout
                )))
            }
        };
        let _ = tcp.set_nodelay(true);
        let keepalive = socket2::TcpKeepalive::new().with_time(Duration::from_secs(60));
        let _ = socket2::SockRef::from(&tcp).set_tcp_keepalive(&keepalive);
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| SendError(error_chain(&e)))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(sender)
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

/// HTTP/1.1 requests carry the path only (origin form), CONNECT the authority; `Host` is set
/// by the handler. As hyper-util's client does for a direct connection.
fn origin_form(req: &mut Request<RequestBody>) {
    let uri = if req.method() == Method::CONNECT {
        req.uri()
            .authority()
            .and_then(|a| Uri::try_from(a.as_str()).ok())
            .unwrap_or_default()
    } else {
        match req.uri().path_and_query() {
            Some(pq) if pq.as_str() != "/" => Uri::from(PathAndQuery::clone(pq)),
            _ => Uri::default(),
        }
    };
    *req.uri_mut() = uri;
}

// === UpstreamBody ===

/// The upstream's response body; for the plain pool, it carries its connection back to the
/// pool when it ends. Dropped before its end, the connection closes (HTTP/1.1 cannot reuse it).
pub struct UpstreamBody {
    inner: Incoming,
    checkin: Option<Checkin>,
}

struct Checkin {
    pool: Arc<Pool>,
    sender: http1::SendRequest<RequestBody>,
}

impl UpstreamBody {
    fn release(&mut self) {
        if let Some(Checkin { pool, sender }) = self.checkin.take() {
            pool.checkin(sender);
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &polled {
            None => this.release(),
            Some(Ok(_)) if this.inner.is_end_stream() => this.release(),
            Some(Ok(_)) => {}
            Some(Err(_)) => this.checkin = None,
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
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

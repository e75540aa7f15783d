//! Listener: binds TCP, prints the bound address, serves hyper connections (HTTP/1.1 keep-alive
//! and HTTP/2, auto-detected) and shuts down gracefully. Generic over the service, so both the
//! proxy and the admin port use it.

use std::{convert::Infallible, net::SocketAddr, time::Duration};

use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulShutdown},
};
use tokio::{net::TcpListener, sync::watch};
use tokio_util::sync::CancellationToken;

use crate::error::StartError;

/// A slow client gets this long to send its request head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Binds `addr` for the listener named by config `key` and prints the bound address.
pub async fn bind(key: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { key, addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| StartError::Bind { key, addr, source })?;
    let label = if key == "listen" { "proxy" } else { "admin" };
    #[allow(clippy::print_stdout)] // stdout carries exactly the two "listening on" lines
    {
        println!("{label} listening on http://{local}");
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
    grace: Duration,
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
    let graceful = GracefulShutdown::new();
    let abort = CancellationToken::new();
    let mut http = auto::Builder::new(TokioExecutor::new());
    http.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(true);
    http.http2().timer(TokioTimer::new());
    loop {
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
                let conn = http.serve_connection(TokioIo::new(tcp), service.clone()).into_owned();
                let conn = graceful.watch(conn);
                let abort = abort.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        ended = conn => {
                            if let Err(e) = ended {
                                tracing::debug!(%peer, error = %e, "connection ended with an error");
                            }
                        }
                        _ = abort.cancelled() => {
                            tracing::debug!(%peer, "connection dropped at the end of the shutdown grace period");
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
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            ?grace,
            "dropping connections still open after the shutdown grace period"
        );
        abort.cancel();
    }
}

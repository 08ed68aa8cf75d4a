//! The HTTP server loop: each connection served by hyper's HTTP/1.1 with a deadline for the
//! request head (`http.head_timeout_ms`) (a client sending its headers slowly, or not at all, is cut off rather than
//! holding a connection and a task for ever), over TLS when configured ([`super::tls`]), and
//! a graceful drain at shutdown.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// How long open connections get to finish after shutdown begins.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves `router` on `listener` (over TLS with `tls`) until `shutdown`, then lets open
/// connections finish. A client gets `head_timeout` to finish the TLS handshake, and then to
/// send each request's head (its request line and headers).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    (tls, head_timeout): (Option<Arc<ServerConfig>>, Duration),
    shutdown: CancellationToken,
) {
    let acceptor = tls.map(TlsAcceptor::from);
    let graceful = GracefulShutdown::new();
    loop {
        let tcp = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    tracing::warn!(error.message = %e, "accept failed");
                    continue;
                }
            },
        };
        let (acceptor, service, watcher) = (
            acceptor.clone(),
            TowerToHyperService::new(router.clone()),
            graceful.watcher(),
        );
        tokio::spawn(async move {
            let Some(acceptor) = acceptor else {
                return connection(tcp, (service, head_timeout), watcher).await;
            };
            match tokio::time::timeout(head_timeout, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => connection(tls, (service, head_timeout), watcher).await,
                Ok(Err(e)) => tracing::debug!(error.message = %e, "TLS handshake failed"),
                Err(_) => {}
            }
        });
    }
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the drain timeout");
    }
}

/// One connection, its requests' heads each due within `head_timeout`.
async fn connection<I: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    io: I,
    (service, head_timeout): (TowerToHyperService<Router>, Duration),
    watcher: hyper_util::server::graceful::Watcher,
) {
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(head_timeout)
        .serve_connection(TokioIo::new(io), service);
    if let Err(e) = watcher.watch(connection).await {
        tracing::debug!(error.message = %e, "connection ended with an error");
    }
}

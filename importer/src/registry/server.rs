//! Serving the registry endpoint over HTTP/1.1 with hyper, in TLS when the process serves TLS
//! (the gRPC port's certificate, reloaded the same way): a bounded number of connections, a
//! deadline for each handshake and each request's headers, and a graceful stop.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use ferry_shared::security::tls::{ReloadingTls, handshake};

use super::Registry;

/// Connections served at once; more wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 1024;
/// Longest a client may take to send a request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long connections may finish their requests once the stop is asked for.
const DRAIN: Duration = Duration::from_secs(5);

/// Serves `registry` on `listener` until `stop` is cancelled, then lets requests in flight finish
/// for a few seconds. With `tls` (when it holds a server certificate), every connection is TLS,
/// handshaken with the certificate in use at that moment.
pub async fn serve(
    listener: TcpListener,
    registry: Registry,
    tls: Option<ReloadingTls>,
    stop: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let connections = TaskTracker::new();
    loop {
        let permit = tokio::select! {
            () = stop.cancelled() => break,
            permit = Arc::clone(&slots).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "registry endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let registry = registry.clone();
        let stop = stop.clone();
        let tls = tls.as_ref().map(ReloadingTls::https_server);
        connections.spawn(async move {
            let _permit = permit;
            match tls {
                None => {
                    let _ = stream.set_nodelay(true);
                    serve_connection(stream, registry, stop).await;
                }
                Some(None) => tracing::error!("registry endpoint: TLS is on but no certificate"),
                Some(Some(config)) => {
                    if let Some(stream) = handshake(config, stream, peer).await {
                        serve_connection(stream, registry, stop).await;
                    }
                }
            }
        });
    }
    connections.close();
    if tokio::time::timeout(DRAIN, connections.wait())
        .await
        .is_err()
    {
        tracing::info!("registry endpoint: connections still open at the stop; dropped");
    }
}

async fn serve_connection<Io>(io: Io, registry: Registry, stop: CancellationToken)
where
    Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |request| {
        let registry = registry.clone();
        async move { Ok::<_, Infallible>(registry.answer(&request).await) }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    let ended = tokio::select! {
        ended = connection.as_mut() => ended,
        () = stop.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = ended {
        tracing::debug!(%error, "registry endpoint: connection ended");
    }
}

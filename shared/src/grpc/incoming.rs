//! Accepting TLS connections with the server configuration in use at each handshake, so that a
//! reloaded certificate serves the next connection. Handshakes run on their own tasks: a slow or
//! silent client holds up nobody else.

use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

use crate::security::tls::{ReloadingTls, handshake};

/// The TLS connections `listener` accepts, handshaken with `tls`'s current server configuration.
/// Failed handshakes are logged and dropped; the stream ends when the server stops reading it.
pub fn tls_incoming(
    listener: TcpListener,
    tls: ReloadingTls,
) -> ReceiverStream<Result<TlsStream<TcpStream>, std::io::Error>> {
    let (sender, receiver) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = sender.closed() => return,
            };
            let (tcp, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Some(config) = tls.server() else {
                tracing::error!("TLS is on but no server certificate is loaded");
                continue;
            };
            let sender = sender.clone();
            tokio::spawn(async move {
                if let Some(stream) = handshake(config, tcp, peer).await {
                    let _ = sender.send(Ok(stream)).await;
                }
            });
        }
    });
    ReceiverStream::new(receiver)
}

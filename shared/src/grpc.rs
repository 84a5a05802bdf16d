//! Serving a Ferry gRPC service: health checking, reflection, a server span and metrics for every
//! request, admission control (credentials, limits), and TLS when configured.

pub mod admission;
pub mod client;
mod incoming;
mod observe;

pub use observe::ObserveLayer;

use std::future::Future;
use std::net::SocketAddr;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::service::Routes;
use tonic_health::ServingStatus;

use crate::security::tls::ReloadingTls;

/// How a server is exposed: see [`crate::security::Security::serve_options`].
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// TLS material, when the port speaks TLS.
    pub tls: Option<ReloadingTls>,
    /// Credentials and limits.
    pub admission: admission::AdmissionLayer,
    /// A plain-text address serving only `grpc.health.v1` (kubelet probes cannot speak mTLS).
    pub health_addr: Option<SocketAddr>,
}

impl Default for ServeOptions {
    /// Plain text, no credentials, default limits.
    fn default() -> Self {
        Self {
            tls: None,
            admission: admission::AdmissionLayer::new(
                admission::AccessPolicy::default(),
                crate::security::Limits::default(),
            ),
            health_addr: None,
        }
    }
}

/// Serves `routes` plus `grpc.health.v1` and server reflection (v1 and v1alpha) on `listener`
/// until `shutdown` completes. `service_names` are reported as serving by the health service.
pub async fn serve(
    listener: TcpListener,
    routes: Routes,
    service_names: &[&str],
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    crate::metrics::GRPC.known_methods(service_methods(service_names).iter().map(String::as_str));
    let (reporter, health_service) = tonic_health::server::health_reporter();
    for name in service_names {
        reporter
            .set_service_status(*name, ServingStatus::Serving)
            .await;
    }
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(ferry_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection()
        .build_v1()
        .expect("embedded descriptors are valid");
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .expect("embedded descriptors are valid");
    let (stop_health, health_stopped) = tokio::sync::oneshot::channel::<()>();
    let health_only = match options.health_addr {
        None => None,
        Some(addr) => match TcpListener::bind(addr).await {
            Ok(health_listener) => {
                let service = health_service.clone();
                Some(tokio::spawn(
                    tonic::transport::Server::builder()
                        .add_service(service)
                        .serve_with_incoming_shutdown(
                            TcpListenerStream::new(health_listener),
                            async {
                                let _ = health_stopped.await;
                            },
                        ),
                ))
            }
            Err(error) => {
                tracing::error!(%addr, %error, "cannot serve health checks");
                None
            }
        },
    };
    let routes = routes
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);
    let server = tonic::transport::Server::builder()
        .layer(ObserveLayer)
        .layer(options.admission)
        .add_routes(routes);
    let served = match options.tls {
        None => {
            server
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
                .await
        }
        Some(tls) => {
            server
                .serve_with_incoming_shutdown(incoming::tls_incoming(listener, tls), shutdown)
                .await
        }
    };
    let _ = stop_health.send(());
    if let Some(task) = health_only {
        let _ = task.await;
    }
    served
}

/// The methods (`/package.Service/Method`, as requests name them) of the services named in
/// `service_names` (`package.Service`), read from the embedded descriptors of Ferry's protos.
pub fn service_methods(service_names: &[&str]) -> Vec<String> {
    use prost::Message as _;
    let Ok(descriptors) = prost_types::FileDescriptorSet::decode(ferry_proto::FILE_DESCRIPTOR_SET)
    else {
        tracing::warn!("the embedded proto descriptors do not decode; no method metrics at 0");
        return Vec::new();
    };
    let mut methods = Vec::new();
    for file in &descriptors.file {
        for service in &file.service {
            let name = format!("{}.{}", file.package(), service.name());
            if service_names.contains(&name.as_str()) {
                methods.extend(
                    (service.method.iter()).map(|method| format!("/{name}/{}", method.name())),
                );
            }
        }
    }
    methods
}

/// A future that completes on SIGINT or SIGTERM. The handlers are installed when this is called
/// (not when the future is first polled), so a signal that arrives during start-up is not lost to
/// the default action. Call it inside the runtime.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send {
    use tokio::signal::unix::{SignalKind, signal};
    let terminate = signal(SignalKind::terminate());
    let interrupt = signal(SignalKind::interrupt());
    async move {
        let wait = |installed: std::io::Result<tokio::signal::unix::Signal>| async move {
            match installed {
                Ok(mut signal) => {
                    signal.recv().await;
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot install a signal handler");
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::select! {
            () = wait(terminate) => tracing::info!("SIGTERM received; shutting down"),
            () = wait(interrupt) => tracing::info!("SIGINT received; shutting down"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::service_methods;

    #[test]
    fn the_methods_of_a_service_come_from_its_descriptor() {
        let methods = service_methods(&["ferry.importer.v1.Importer"]);
        assert!(
            methods.contains(&"/ferry.importer.v1.Importer/StartImport".to_owned()),
            "{methods:?}"
        );
        let proto = include_str!("../../proto/ferry/importer/v1/importer.proto");
        let declared = proto
            .lines()
            .filter(|line| line.trim_start().starts_with("rpc "))
            .count();
        assert_eq!(methods.len(), declared, "{methods:?}");
        assert!(service_methods(&["no.such.Service"]).is_empty());
    }
}

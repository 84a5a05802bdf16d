//! Serving a Ferry gRPC service with health checking, reflection and request metrics.

mod metrics_layer;

pub use metrics_layer::GrpcMetricsLayer;

use std::future::Future;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::service::Routes;
use tonic_health::ServingStatus;

/// Serves `routes` plus `grpc.health.v1` and server reflection (v1 and v1alpha) on `listener`
/// until `shutdown` completes. `service_names` are reported as serving by the health service.
pub async fn serve(
    listener: TcpListener,
    routes: Routes,
    service_names: &[&str],
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
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
    let routes = routes
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);
    tonic::transport::Server::builder()
        .layer(GrpcMetricsLayer)
        .add_routes(routes)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await
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

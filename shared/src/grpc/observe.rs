//! A tower layer that observes every gRPC request a server answers: a server span that continues
//! the caller's trace (W3C `traceparent`), and the request counted and timed by method and status
//! code in [`crate::metrics::GRPC`].

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use tower::{Layer, Service};
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// Adds a server span and request metrics to a service.
#[derive(Debug, Clone, Copy, Default)]
pub struct ObserveLayer;

impl<S> Layer<S> for ObserveLayer {
    type Service = Observed<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Observed { inner }
    }
}

/// A service whose requests are traced, counted and timed.
#[derive(Debug, Clone)]
pub struct Observed<S> {
    inner: S,
}

/// The code of a finished call: the `grpc-status` header of a trailers-only answer (errors), `OK`
/// when the status comes later in the trailers (successful unary calls and streams).
fn code<B>(response: &http::Response<B>) -> String {
    match response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
    {
        None | Some("0") => "OK".to_owned(),
        Some(number) => number
            .parse::<i32>()
            .map(|n| format!("{:?}", tonic::Code::from_i32(n)))
            .unwrap_or_else(|_| number.to_owned()),
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for Observed<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: 'static,
    ResBody: 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let method = request.uri().path().to_owned();
        let started = Instant::now();
        // Health checks and reflection are not worth a trace each.
        let span = if method.starts_with("/grpc.") {
            tracing::Span::none()
        } else {
            tracing::info_span!(
                "grpc.server",
                otel.name = %method,
                otel.kind = "server",
                rpc.system = "grpc",
                rpc.method = %method,
                rpc.grpc.status_code = tracing::field::Empty,
            )
        };
        // No caller context: the span starts a trace of its own.
        let _ = span.set_parent(crate::telemetry::traces::extract(request.headers()));
        let call = {
            let _entered = span.enter();
            self.inner.call(request)
        };
        let recorder = span.clone();
        Box::pin(
            async move {
                let result = call.await;
                let code = match &result {
                    Ok(response) => code(response),
                    Err(_) => "transport_error".to_owned(),
                };
                recorder.record("rpc.grpc.status_code", code.as_str());
                crate::metrics::GRPC.request(&method, &code, started.elapsed().as_secs_f64());
                result
            }
            .instrument(span),
        )
    }
}

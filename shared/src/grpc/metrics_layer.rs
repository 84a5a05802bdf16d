//! A tower layer that counts and times every gRPC request a server answers, by method and status
//! code, into [`crate::metrics::GRPC`].

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use tower::{Layer, Service};

/// Adds request metrics to a service.
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcMetricsLayer;

impl<S> Layer<S> for GrpcMetricsLayer {
    type Service = WithGrpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        WithGrpcMetrics { inner }
    }
}

/// A service whose requests are counted and timed.
#[derive(Debug, Clone)]
pub struct WithGrpcMetrics<S> {
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

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for WithGrpcMetrics<S>
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
        let call = self.inner.call(request);
        Box::pin(async move {
            let result = call.await;
            let code = match &result {
                Ok(response) => code(response),
                Err(_) => "transport_error".to_owned(),
            };
            crate::metrics::GRPC.request(&method, &code, started.elapsed().as_secs_f64());
            result
        })
    }
}

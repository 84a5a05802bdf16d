//! The admission layer: every call but a health check passes here before its handler.
//!
//! In order, a call is refused
//! 1. `RESOURCE_EXHAUSTED` when the server already serves its limit of calls (load shedding:
//!    refused at once rather than queued, so callers back off and retry elsewhere);
//! 2. `UNAUTHENTICATED` when credentials are required and it has none, or a token that is not
//!    accepted; `PERMISSION_DENIED` when its credentials do not reach the method's scope;
//! 3. `DEADLINE_EXCEEDED` when its handler takes longer than the request timeout;
//! 4. `RESOURCE_EXHAUSTED` when its request body grows past the size limit.
//!
//! Credentials are a bearer token (`authorization: Bearer …`, scope from the token file) or a
//! client certificate verified against the CA, which grants the admin scope: certificates are
//! issued to Ferry's own services only.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use tokio::sync::Semaphore;
use tonic::Status;
use tonic::body::Body;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tower::{Layer, Service};

use crate::security::tokens::ReloadingTokens;
use crate::security::{Limits, Scope};

/// Who must show what.
#[derive(Debug, Clone, Default)]
pub struct AccessPolicy {
    /// Accepted tokens; `None` when the deployment uses no tokens.
    pub tokens: Option<ReloadingTokens>,
    /// Whether client certificates are verified (the server has a CA). With no token file, a
    /// verified certificate is then required.
    pub verifies_certificates: bool,
    /// Full paths (`/package.Service/Method`) that need only the read scope; every other method
    /// needs admin.
    pub read_methods: &'static [&'static str],
}

impl AccessPolicy {
    fn enforced(&self) -> bool {
        self.tokens.is_some() || self.verifies_certificates
    }

    fn required(&self, path: &str) -> Scope {
        if self.read_methods.contains(&path) {
            Scope::Read
        } else {
            Scope::Admin
        }
    }

    /// The scope a call's credentials grant, or the status that refuses it.
    fn check<B>(&self, request: &http::Request<B>) -> Result<(), Status> {
        if !self.enforced() {
            return Ok(());
        }
        let path = request.uri().path();
        let certified = request
            .extensions()
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(TlsConnectInfo::peer_certs)
            .is_some_and(|certs| !certs.is_empty());
        let bearer = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .map(|value| {
                value
                    .to_str()
                    .ok()
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .map(str::trim)
                    .filter(|token| !token.is_empty())
            });
        let from_token = match (bearer, &self.tokens) {
            (None, _) => None,
            (Some(None), _) => {
                return Err(Status::unauthenticated(
                    "the authorization header is not `Bearer <token>`",
                ));
            }
            (Some(Some(_)), None) => {
                return Err(Status::unauthenticated(
                    "this server accepts no tokens; it needs a client certificate",
                ));
            }
            (Some(Some(token)), Some(tokens)) => match tokens.current().scope(token) {
                Some(scope) => Some(scope),
                None => return Err(Status::unauthenticated("the bearer token is not accepted")),
            },
        };
        let granted = if certified {
            Some(Scope::Admin)
        } else {
            from_token
        };
        let Some(granted) = granted else {
            return Err(Status::unauthenticated(if self.tokens.is_some() {
                "this call needs a bearer token or a client certificate"
            } else {
                "this call needs a client certificate"
            }));
        };
        let required = self.required(path);
        if granted < required {
            return Err(Status::permission_denied(format!(
                "{path} needs the {} scope; the token has {}",
                required.as_str(),
                granted.as_str()
            )));
        }
        Ok(())
    }
}

/// Adds admission control to a service; one semaphore is shared by every connection.
#[derive(Debug, Clone)]
pub struct AdmissionLayer {
    policy: Arc<AccessPolicy>,
    limits: Limits,
    permits: Arc<Semaphore>,
}

impl AdmissionLayer {
    /// A layer enforcing `policy` and `limits`.
    pub fn new(policy: AccessPolicy, limits: Limits) -> Self {
        Self {
            policy: Arc::new(policy),
            limits,
            permits: Arc::new(Semaphore::new(limits.max_concurrent)),
        }
    }
}

impl<S> Layer<S> for AdmissionLayer {
    type Service = Admitted<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Admitted {
            inner,
            layer: self.clone(),
        }
    }
}

/// A service behind admission control.
#[derive(Debug, Clone)]
pub struct Admitted<S> {
    inner: S,
    layer: AdmissionLayer,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

fn refuse<E>(status: Status) -> BoxFuture<Result<http::Response<Body>, E>>
where
    E: Send + 'static,
{
    Box::pin(std::future::ready(Ok(status.into_http())))
}

impl<S> Service<http::Request<Body>> for Admitted<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        // Kubelet probes and load balancers must get an answer even when the server is full.
        if request.uri().path().starts_with("/grpc.health.") {
            return Box::pin(self.inner.call(request));
        }
        let layer = &self.layer;
        let Ok(permit) = layer.permits.clone().try_acquire_owned() else {
            tracing::warn!(
                method = request.uri().path(),
                limit = layer.limits.max_concurrent,
                "call shed: the server is at its concurrency limit"
            );
            return refuse(Status::resource_exhausted(format!(
                "the server is at its limit of {} calls at once; retry with backoff",
                layer.limits.max_concurrent
            )));
        };
        if let Err(status) = layer.policy.check(&request) {
            tracing::info!(
                method = request.uri().path(),
                code = ?status.code(),
                reason = status.message(),
                "call refused"
            );
            return refuse(status);
        }
        let max_bytes = layer.limits.max_request_bytes;
        let request = request.map(|body| {
            Body::new(CappedBody {
                inner: body,
                left: max_bytes,
                limit: max_bytes,
            })
        });
        let timeout = layer.limits.request_timeout;
        let call = self.inner.call(request);
        Box::pin(async move {
            let answer = tokio::time::timeout(timeout, call).await;
            drop(permit);
            match answer {
                Ok(answer) => answer,
                Err(_) => Ok(Status::deadline_exceeded(format!(
                    "the call took longer than the server's limit of {} s",
                    timeout.as_secs_f64()
                ))
                .into_http()),
            }
        })
    }
}

/// A request body that fails with `RESOURCE_EXHAUSTED` once it carries more than `limit` bytes.
struct CappedBody {
    inner: Body,
    left: usize,
    limit: usize,
}

impl http_body::Body for CappedBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Status>>> {
        let frame = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if let Some(Ok(frame)) = &frame
            && let Some(data) = frame.data_ref()
        {
            if data.len() > self.left {
                return Poll::Ready(Some(Err(Status::resource_exhausted(format!(
                    "the request is larger than the server's limit of {} bytes",
                    self.limit
                )))));
            }
            self.left -= data.len();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

//! A rate-limited front for fake-gcs-server: token buckets, one for reads (GET, HEAD) and one
//! for writes (every other method), that forward what they allow and answer the rest `429 Too
//! Many Requests` with GCS's JSON error, as GCS does when a bucket's request rate outgrows it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};

/// What the proxy let through and refused.
#[derive(Debug, Default)]
pub struct Counts {
    /// Requests forwarded.
    pub forwarded: AtomicU64,
    /// Requests answered 429.
    pub refused: AtomicU64,
    /// Reads forwarded in each second since the proxy started.
    pub reads_per_second: Mutex<Vec<u64>>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// A running proxy.
#[derive(Debug)]
pub struct ThrottleProxy {
    /// `host:port` to use as `STORAGE_EMULATOR_HOST`.
    pub address: SocketAddr,
    /// What it did so far.
    pub counts: Arc<Counts>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ThrottleProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Body = BoxBody<Bytes, hyper::Error>;

impl ThrottleProxy {
    /// Forwards to `upstream` (`host:port`) at most `rate` reads and `rate` writes per second,
    /// with bursts of `burst` requests.
    pub async fn start(upstream: &str, rate: f64, burst: f64) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("addr");
        let counts = Arc::new(Counts::default());
        let bucket = Arc::new(Mutex::new([0, 1].map(|_| Bucket {
            tokens: burst,
            at: Instant::now(),
        })));
        let client: Client<HttpConnector, Incoming> =
            Client::builder(TokioExecutor::new()).build_http();
        let upstream = upstream.trim_start_matches("http://").to_owned();
        let started = Instant::now();
        let task = {
            let counts = Arc::clone(&counts);
            tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let (client, counts, bucket, upstream) = (
                        client.clone(),
                        Arc::clone(&counts),
                        Arc::clone(&bucket),
                        upstream.clone(),
                    );
                    tokio::spawn(async move {
                        let service =
                            hyper::service::service_fn(move |request: Request<Incoming>| {
                                let write = !matches!(
                                    *request.method(),
                                    hyper::Method::GET | hyper::Method::HEAD
                                );
                                let allowed = {
                                    let mut buckets =
                                        bucket.lock().unwrap_or_else(|e| e.into_inner());
                                    let b = &mut buckets[usize::from(write)];
                                    let now = Instant::now();
                                    b.tokens = (b.tokens
                                        + now.duration_since(b.at).as_secs_f64() * rate)
                                        .min(burst);
                                    b.at = now;
                                    if b.tokens >= 1.0 {
                                        b.tokens -= 1.0;
                                        true
                                    } else {
                                        false
                                    }
                                };
                                let (client, counts, upstream) =
                                    (client.clone(), Arc::clone(&counts), upstream.clone());
                                async move {
                                    if !allowed {
                                        counts.refused.fetch_add(1, Ordering::Relaxed);
                                        return Ok::<_, Infallible>(too_many());
                                    }
                                    counts.forwarded.fetch_add(1, Ordering::Relaxed);
                                    if !write {
                                        let second = started.elapsed().as_secs() as usize;
                                        let mut per = counts
                                            .reads_per_second
                                            .lock()
                                            .unwrap_or_else(|e| e.into_inner());
                                        if per.len() <= second {
                                            per.resize(second + 1, 0);
                                        }
                                        per[second] += 1;
                                    }
                                    Ok(forward(&client, &upstream, request).await)
                                }
                            });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            })
        };
        Self {
            address,
            counts,
            task,
        }
    }

    /// Requests forwarded so far.
    pub fn forwarded(&self) -> u64 {
        self.counts.forwarded.load(Ordering::Relaxed)
    }

    /// Requests refused so far.
    pub fn refused(&self) -> u64 {
        self.counts.refused.load(Ordering::Relaxed)
    }
}

fn full(bytes: &'static str) -> Body {
    Full::new(Bytes::from_static(bytes.as_bytes()))
        .map_err(|never| match never {})
        .boxed()
}

fn too_many() -> Response<Body> {
    let mut response = Response::new(full(
        r#"{"error":{"code":429,"message":"The rate of requests to the bucket is too high.","errors":[{"reason":"rateLimitExceeded"}]}}"#,
    ));
    *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
    response
        .headers_mut()
        .insert("content-type", "application/json".parse().expect("header"));
    response
}

async fn forward(
    client: &Client<HttpConnector, Incoming>,
    upstream: &str,
    mut request: Request<Incoming>,
) -> Response<Body> {
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    *request.uri_mut() = format!("http://{upstream}{path}").parse().expect("uri");
    match client.request(request).await {
        Ok(response) => response.map(BodyExt::boxed),
        Err(error) => {
            let mut response = Response::new(
                Full::new(Bytes::from(format!("proxy: {error}")))
                    .map_err(|never| match never {})
                    .boxed(),
            );
            *response.status_mut() = StatusCode::BAD_GATEWAY;
            response
        }
    }
}

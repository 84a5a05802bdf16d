//! The clients of figure i: `clients` HTTP/1.1 connections kept alive, each pulling one request
//! at a time from a shared list until a fixed number of requests is done, every answer read to
//! its end and checked, so that a broken server cannot look fast.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use sha2::Digest as _;

/// Every manifest media type the dataset holds, for `Accept` (as a pulling client sends it).
const MANIFEST_TYPES: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.docker.distribution.manifest.v2+json";

/// One thing to pull: a manifest (by tag or digest) or a blob.
#[derive(Debug, Clone)]
pub struct Target {
    /// The request path (`/v2/<name>/manifests/<reference>` or `/v2/<name>/blobs/<digest>`).
    pub path: String,
    /// The digest the answer must carry and hash to.
    pub digest: String,
    /// The blob's size; `None` for a manifest, whose body is always hashed.
    pub size: Option<u64>,
}

/// What the clients must find in every answer besides the target's digest and size.
#[derive(Debug, Clone, Copy)]
pub struct Checks {
    /// The `ferry-code-path` header every answer must carry (Ferry's new path), if any.
    pub code_path: Option<&'static str>,
    /// Whether to hash blob bodies too (the verification pass), not only count their bytes.
    pub hash_blobs: bool,
}

/// What a load did.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    /// Requests answered.
    pub requests: usize,
    /// Body bytes read.
    pub bytes: u64,
    /// Wall time from the first connection to the last body read.
    pub seconds: f64,
}

impl Load {
    /// Requests a second.
    pub fn per_second(&self) -> f64 {
        self.requests as f64 / self.seconds
    }

    /// Body MiB a second.
    pub fn mib_per_second(&self) -> f64 {
        self.bytes as f64 / 1048576.0 / self.seconds
    }
}

/// Pulls `requests` targets, cycling through `targets` in order, over `clients` connections to
/// 127.0.0.1:`port`; panics naming the server on any wrong answer.
pub async fn drive(
    server: &str,
    port: u16,
    targets: &Arc<Vec<Target>>,
    requests: usize,
    clients: usize,
    checks: Checks,
) -> Load {
    assert!(!targets.is_empty(), "nothing to pull");
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..clients)
        .map(|_| {
            let (targets, next, server) =
                (Arc::clone(targets), Arc::clone(&next), server.to_owned());
            tokio::spawn(async move {
                let mut sender = connect(&server, port).await;
                let (mut done, mut bytes) = (0, 0);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= requests {
                        break (done, bytes);
                    }
                    if sender.ready().await.is_err() {
                        // The server closed the kept-alive connection: open another.
                        sender = connect(&server, port).await;
                    }
                    let target = &targets[i % targets.len()];
                    bytes += pull(&server, port, &mut sender, target, checks).await;
                    done += 1;
                }
            })
        })
        .collect();
    let (mut done, mut bytes) = (0, 0);
    for worker in workers {
        match worker.await {
            Ok((d, b)) => {
                done += d;
                bytes += b;
            }
            Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            Err(error) => panic!("{server}: a client stopped: {error}"),
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!(done, requests, "{server}: requests answered");
    Load {
        requests: done,
        bytes,
        seconds,
    }
}

async fn connect(server: &str, port: u16) -> SendRequest<Empty<Bytes>> {
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap_or_else(|e| panic!("{server} on port {port}: cannot connect: {e}"));
    let _ = stream.set_nodelay(true);
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap_or_else(|e| panic!("{server}: HTTP handshake: {e}"));
    tokio::spawn(async move {
        let _ = connection.await;
    });
    sender
}

/// One request, its answer read to the end and checked; returns the body's length.
async fn pull(
    server: &str,
    port: u16,
    sender: &mut SendRequest<Empty<Bytes>>,
    target: &Target,
    checks: Checks,
) -> u64 {
    let accept = if target.size.is_none() {
        MANIFEST_TYPES
    } else {
        "*/*"
    };
    let request = hyper::Request::get(target.path.as_str())
        .header(hyper::header::HOST, format!("127.0.0.1:{port}"))
        .header(hyper::header::ACCEPT, accept)
        .body(Empty::new())
        .expect("request");
    let response = sender
        .send_request(request)
        .await
        .unwrap_or_else(|e| panic!("{server}: GET {}: {e}", target.path));
    let (head, mut body) = response.into_parts();
    assert_eq!(head.status, 200, "{server}: GET {}", target.path);
    let header = |name: &str| head.headers.get(name).and_then(|v| v.to_str().ok());
    assert_eq!(
        header("docker-content-digest"),
        Some(target.digest.as_str()),
        "{server}: GET {}: Docker-Content-Digest",
        target.path
    );
    if let Some(code_path) = checks.code_path {
        assert_eq!(
            header("ferry-code-path"),
            Some(code_path),
            "{server}: GET {}: the code path that answered",
            target.path
        );
    }
    let mut hasher = (target.size.is_none() || checks.hash_blobs).then(sha2::Sha256::new);
    let mut length = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.unwrap_or_else(|e| panic!("{server}: GET {}: body: {e}", target.path));
        if let Ok(data) = frame.into_data() {
            length += data.len() as u64;
            if let Some(hasher) = hasher.as_mut() {
                hasher.update(&data);
            }
        }
    }
    if let Some(size) = target.size {
        assert_eq!(length, size, "{server}: GET {}: bytes", target.path);
    }
    if let Some(hasher) = hasher {
        let digest = format!("sha256:{}", hex::encode(hasher.finalize()));
        assert_eq!(digest, target.digest, "{server}: GET {}: body", target.path);
    }
    length
}

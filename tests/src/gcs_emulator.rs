//! An in-memory GCS JSON API emulator that answers every request after a set delay, to measure
//! Ferry against a bucket's round trip rather than against local disk: each request waits on
//! its own timer (`tokio::time::sleep`), so requests overlap as they would on GCS, and the
//! emulator counts them by kind and in flight. fake-gcs-server stays the conformance
//! reference; this is for speed. Release build, 2 cores shared with its load client: about
//! 50,000 metadata GETs/s at no delay; at 25 ms, 9,200/s with 256 in flight and 31,000/s with
//! 1,024 (about 20 µs of CPU a request; a full 1,000-object listing page, about 0.5 ms).
//!
//! It speaks the calls Ferry's GCS driver and [`crate::buckets::GcsBucket`] make, against
//! `GcsStore::with_endpoint` or `STORAGE_EMULATOR_HOST`:
//!
//! * buckets: insert (`POST /storage/v1/b`, 409 when it exists), get, list, delete (409
//!   unless empty);
//! * `GET .../b/{b}/o`: listings with `prefix`, `delimiter`, `startOffset`, `endOffset`,
//!   `maxResults` (at most 1,000; objects and prefixes count together, as on GCS) and
//!   `pageToken` (given only when more follows); `versions`, `matchGlob` and
//!   `includeTrailingDelimiter` are refused (501) rather than ignored;
//! * `GET .../o/{o}`: the object resource (`generation`, `metageneration`, `size`, `crc32c`,
//!   `md5Hash`, ...; 64-bit numbers as strings);
//! * `GET .../o/{o}?alt=media` (and the `mediaLink` form): the bytes, with `Content-Length`,
//!   `x-goog-hash: crc32c=...,md5=...`, `x-goog-generation`, and single `Range`s (206, 416);
//! * `POST .../o/{o}/rewriteTo/b/{b2}/o/{o2}`: the copy, always `done: true` in one call, with
//!   the new resource; `copyTo` too;
//! * `POST /upload/storage/v1/b/{b}/o?uploadType=media&name=...` (multipart and resumable
//!   uploads are refused: nothing here makes them);
//! * `DELETE .../o/{o}` (204).
//!
//! Reads, deletes and the rewrite's source honour `generation`/`sourceGeneration` (another
//! generation is 404); every call honours `if[Source][Meta]generation[Not]Match`, checked in the
//! same lock as the write, `ifGenerationMatch=0` meaning "must not exist" (412 otherwise; a
//! read's failed `*NotMatch` is 304). Errors carry GCS's JSON body. CRC32C is Castagnoli, base64
//! of the big-endian value, as GCS reports it. Generations increase with every write. Objects
//! live in memory and are never versioned: only the live generation is kept.
//!
//! Every request is counted (see [`StatsSnapshot`]) and in flight from its arrival; an upload's
//! body is read, then the delay runs, then the operation and the answer, which is sent whole.
//! `GET /_emulator/stats` answers the counters as JSON, `POST /_emulator/reset` zeroes them and
//! `POST /_emulator/latency?ms=N` changes the delay; these answer at once and are not counted.
//!
//! The emulator runs on its own runtime (two worker threads), so its timers keep time whatever
//! the caller's runtime is doing, and it works from synchronous code as from async tests. It
//! stops when its handle is dropped. The binary `ferry-gcs-emulator` serves one from the
//! command line.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

mod http;
mod resource;
mod stats;
mod store;

pub use stats::{RequestKind, StatsSnapshot};

use stats::Stats;
use store::{Conditions, Store};

/// What every connection shares.
struct Shared {
    store: Store,
    stats: Stats,
    latency_nanos: AtomicU64,
}

impl Shared {
    fn latency(&self) -> Duration {
        Duration::from_nanos(self.latency_nanos.load(Ordering::Relaxed))
    }

    fn set_latency(&self, latency: Duration) {
        let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.latency_nanos.store(nanos, Ordering::Relaxed);
    }
}

/// A running emulator; it stops when dropped.
pub struct GcsEmulator {
    address: SocketAddr,
    shared: Arc<Shared>,
    /// Dropping it stops the server's runtime (on its own thread).
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl std::fmt::Debug for GcsEmulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GcsEmulator")
            .field("address", &self.address)
            .field("latency", &self.latency())
            .finish_non_exhaustive()
    }
}

impl GcsEmulator {
    /// An emulator on a free loopback port, answering each request `latency` late.
    ///
    /// # Panics
    /// When it cannot bind a port or start its runtime.
    pub fn start(latency: Duration) -> Self {
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        Self::bind(loopback, latency).expect("start the GCS emulator")
    }

    /// An emulator listening on `address` (port 0: any free one), answering each request
    /// `latency` late.
    pub fn bind(address: SocketAddr, latency: Duration) -> io::Result<Self> {
        let listener = std::net::TcpListener::bind(address)?;
        listener.set_nonblocking(true)?;
        let address = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("gcs-emulator")
            .enable_all()
            .build()?;
        let listener = {
            let _entered = runtime.enter();
            TcpListener::from_std(listener)?
        };
        let shared = Arc::new(Shared {
            store: Store::new(format!("http://{address}")),
            stats: Stats::default(),
            latency_nanos: AtomicU64::new(0),
        });
        shared.set_latency(latency);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("gcs-emulator".to_owned())
            .spawn(move || {
                runtime.block_on(async move {
                    tokio::select! {
                        () = serve(listener, serving) => {}
                        _ = stopped => {}
                    }
                });
                // The runtime drops here, outside any async context: its tasks end with it.
            })?;
        Ok(Self {
            address,
            shared,
            _stop: stop,
        })
    }

    /// The address it listens on (`host:port`, as `STORAGE_EMULATOR_HOST` takes it).
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Its base URL, `http://host:port`, for `GcsStore::with_endpoint`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.address)
    }

    /// The counters now.
    pub fn stats(&self) -> StatsSnapshot {
        self.shared.stats.snapshot()
    }

    /// Zeroes the counters (the peak restarts from the requests in flight now).
    pub fn reset_stats(&self) {
        self.shared.stats.reset();
    }

    /// How late each request is answered.
    pub fn latency(&self) -> Duration {
        self.shared.latency()
    }

    /// Answers requests that arrive from now on `latency` late.
    pub fn set_latency(&self, latency: Duration) {
        self.shared.set_latency(latency);
    }

    /// Creates bucket `name` directly (no request, no delay): `Ok(false)` if it exists, an
    /// error if the name is not a bucket name.
    pub fn create_bucket(&self, name: &str) -> Result<bool, String> {
        match self.shared.store.create_bucket(name) {
            Ok(_) => Ok(true),
            Err(store::ApiError::Conflict(_)) => Ok(false),
            Err(error) => Err(error.reason_and_message().1),
        }
    }

    /// Stores `data` as `bucket/name` directly (no request, no delay), replacing any object
    /// there; its new generation.
    ///
    /// # Panics
    /// When the bucket does not exist or `name` is empty.
    pub fn put_object(&self, bucket: &str, name: &str, data: impl Into<Bytes>) -> i64 {
        let content_type = "application/octet-stream".to_owned();
        let conditions = Conditions::default();
        match (self.shared.store).put(bucket, name, data.into(), content_type, &conditions) {
            Ok(object) => object.generation,
            Err(error) => panic!("put {bucket}/{name}: {error:?}"),
        }
    }

    /// Stores every file of [`crate::buckets::files_under`] `dir` in `bucket` directly (no
    /// request, no delay), under its key, as [`crate::buckets::GcsBucket::upload_dir`] uploads
    /// them; how many it stored.
    ///
    /// # Panics
    /// When the bucket does not exist or `dir` cannot be read.
    pub fn put_dir(&self, bucket: &str, dir: &Path) -> usize {
        let files = crate::buckets::files_under(dir);
        for (key, path) in &files {
            let data =
                std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
            self.put_object(bucket, key, data);
        }
        files.len()
    }

    /// The bytes of the live `bucket/name`, read directly; `None` if there is none.
    pub fn object(&self, bucket: &str, name: &str) -> Option<Bytes> {
        let object = self.shared.store.get(bucket, name, &Conditions::default());
        object.ok().map(|object| object.data.clone())
    }
}

/// Accepts connections until the runtime stops, each served on its own task (HTTP/1.1 with
/// keep-alive; requests on different connections overlap, delays included).
async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                // Out of file descriptors, most likely: let some connections close.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                http::handle(Arc::clone(&shared), request)
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

#[cfg(test)]
mod tests;

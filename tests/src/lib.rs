//! Harness for Ferry's end-to-end tests: fresh PostgreSQL databases, a sample registry written by
//! the real `docker-registry` with images pushed by `skopeo`, the scheduler and importers serving
//! real gRPC on loopback ports, and a minimal HTTP client for the registry's own API.
//!
//! Needs what `make test` sets up: PostgreSQL (`FERRY_TEST_POSTGRES_URL`, default
//! `postgres://postgres@127.0.0.1:5432/postgres`), Redis (`FERRY_TEST_REDIS_URL`, default
//! `redis://127.0.0.1:6379`), docker-registry, skopeo and umoci.

pub mod buckets;
pub mod certs;
pub mod chaos;
mod cluster;
pub mod dataset;
pub mod gcs_emulator;
mod importer_harness;
mod layout_writer;
pub mod metric_names;
pub mod processes;
pub mod repair_seed;
mod scheduler_harness;
pub mod throttle;
pub mod wait;

pub use cluster::{Cluster, ClusterOptions, run_inventory, state_count};
pub use importer_harness::{ImporterHarness, serve_importer};
pub use layout_writer::LayoutWriter;
pub use scheduler_harness::{registered_store, replica_keys, scheduler_with, scheduler_with_url};
pub use wait::{poll_until, wait_until};

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The workspace root (where `scripts/` lives).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn postgres_server_url() -> String {
    std::env::var("FERRY_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// The Redis URL tests use.
pub fn redis_url() -> String {
    std::env::var("FERRY_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// A short random lowercase suffix for database names and Redis prefixes.
pub fn unique_suffix() -> String {
    use std::collections::hash_map::RandomState;
    use std::hash::BuildHasher;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "{:016x}",
        RandomState::new().hash_one((nanos, std::process::id()))
    )
}

/// A benchmark size from the environment variable `name`, or `default`.
pub fn env_size<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Creates an empty database and returns its URL.
pub async fn fresh_database(label: &str) -> String {
    use sqlx::Connection;
    let server = postgres_server_url();
    let name = format!("ferry_test_{label}_{}", unique_suffix());
    let mut admin = sqlx::PgConnection::connect(&server)
        .await
        .unwrap_or_else(|e| panic!("cannot reach PostgreSQL at {server} (run `make test`): {e}"));
    sqlx::query(&format!("CREATE DATABASE \"{name}\""))
        .execute(&mut admin)
        .await
        .expect("create test database");
    let base = server
        .rsplit_once('/')
        .map_or(server.as_str(), |(base, _)| base);
    format!("{base}/{name}")
}

/// A sample registry in a temporary directory, described by its `.ferry-sample.json`.
#[derive(Debug)]
pub struct SampleRegistry {
    /// Keeps the directory alive.
    pub dir: tempfile::TempDir,
    /// The parsed description.
    pub description: serde_json::Value,
}

impl SampleRegistry {
    /// Builds the sample with `scripts/sample-registry.sh` (real docker-registry + skopeo).
    pub fn build(with_broken: bool) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("ferry-e2e-")
            .tempdir()
            .expect("tempdir");
        let root = dir.path().join("registry");
        let mut command = Command::new("bash");
        command
            .arg(workspace_root().join("scripts/sample-registry.sh"))
            .arg(&root);
        if with_broken {
            command.arg("--with-broken");
        }
        let output = command.output().expect("run scripts/sample-registry.sh");
        assert!(
            output.status.success(),
            "sample-registry.sh failed (run `make test` to install docker-registry, skopeo, umoci):\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let description =
            std::fs::read(root.join(".ferry-sample.json")).expect("sample description");
        let description = serde_json::from_slice(&description).expect("sample description JSON");
        Self { dir, description }
    }

    /// The directory that holds `docker/`.
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("registry")
    }

    /// The sample's repositories.
    pub fn repositories(&self) -> &Vec<serde_json::Value> {
        self.description["repositories"]
            .as_array()
            .expect("repositories")
    }

    /// One repository's description.
    pub fn repository(&self, path: &str) -> &serde_json::Value {
        self.repositories()
            .iter()
            .find(|r| r["path"] == path)
            .unwrap_or_else(|| panic!("{path} not in the sample"))
    }
}

/// The real registry serving a storage root over HTTP (`scripts/registry-serve.sh`).
#[derive(Debug)]
pub struct RegistryServer {
    child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

impl RegistryServer {
    /// Starts docker-registry on a free port and waits until `/v2/` answers.
    pub async fn start(root: &Path) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let child = Command::new("bash")
            .arg(workspace_root().join("scripts/registry-serve.sh"))
            .arg(root)
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start docker-registry");
        let server = Self { child, port };
        wait_until(
            &format!("docker-registry to answer on {port}"),
            Duration::from_secs(20),
            async || match http_request(port, "GET", "/v2/", "").await {
                Some(response) if response.status == 200 => Ok(()),
                other => Err(other.map(|r| r.status)),
            },
        )
        .await;
        server
    }

    /// The digest the registry serves for `repository:reference`, or `None` on 404.
    pub async fn manifest_digest(&self, repository: &str, reference: &str) -> Option<String> {
        let response = http_request(
            self.port,
            "HEAD",
            &format!("/v2/{repository}/manifests/{reference}"),
            MANIFEST_TYPES,
        )
        .await
        .expect("registry answers");
        match response.status {
            200 => Some(
                response
                    .header("docker-content-digest")
                    .expect("digest header")
                    .to_owned(),
            ),
            404 => None,
            other => panic!("registry answered {other} for {repository}:{reference}"),
        }
    }
}

impl RegistryServer {
    /// The manifest the registry serves for `repository@reference`, byte for byte (`None` on
    /// 404).
    pub async fn manifest(&self, repository: &str, reference: &str) -> Option<String> {
        let response = http_request(
            self.port,
            "GET",
            &format!("/v2/{repository}/manifests/{reference}"),
            MANIFEST_TYPES,
        )
        .await
        .expect("registry answers");
        (response.status == 200).then_some(response.body)
    }

    /// The tags the registry lists for `repository` (empty when it lists none).
    pub async fn tags(&self, repository: &str) -> Vec<String> {
        let response = http_request(
            self.port,
            "GET",
            &format!("/v2/{repository}/tags/list"),
            "application/json",
        )
        .await
        .expect("registry answers");
        if response.status != 200 {
            return Vec::new();
        }
        let list: serde_json::Value = serde_json::from_str(&response.body)
            .unwrap_or_else(|e| panic!("tags/list of {repository} ({e}): {}", response.body));
        list["tags"]
            .as_array()
            .map(|tags| {
                tags.iter()
                    .filter_map(|t| t.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Every manifest media type Ferry migrates, for `Accept`.
const MANIFEST_TYPES: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.docker.distribution.manifest.v2+json";

impl Drop for RegistryServer {
    fn drop(&mut self) {
        // registry-serve.sh execs docker-registry, so the child is the registry itself.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A parsed HTTP response head.
#[derive(Debug)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    headers: Vec<(String, String)>,
    /// The body, as text.
    pub body: String,
}

impl HttpResponse {
    /// A header's value (name compared case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request to 127.0.0.1:`port` (a chunked answer's body joined); `None` if the
/// connection fails or the answer is malformed (no end of its head, a broken chunk).
pub async fn http_request(
    port: u16,
    method: &str,
    path: &str,
    accept: &str,
) -> Option<HttpResponse> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: {accept}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.ok()?;
    let head_end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&raw[..head_end]);
    let mut lines = head.lines();
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_owned(), value.trim().to_owned()))
        .collect();
    let chunked = headers.iter().any(|(name, value)| {
        name.eq_ignore_ascii_case("transfer-encoding") && value.eq_ignore_ascii_case("chunked")
    });
    let body = &raw[head_end + 4..];
    // A HEAD answer or a 304 names its encoding but carries no body.
    let body = if chunked && !body.is_empty() {
        dechunk(body)?
    } else {
        body.to_vec()
    };
    let body = String::from_utf8_lossy(&body).into_owned();
    Some(HttpResponse {
        status,
        headers,
        body,
    })
}

/// A `Transfer-Encoding: chunked` body, joined; `None` if it is malformed.
fn dechunk(mut body: &[u8]) -> Option<Vec<u8>> {
    let mut joined = Vec::new();
    loop {
        let line_end = body.windows(2).position(|w| w == b"\r\n")?;
        let size = std::str::from_utf8(&body[..line_end]).ok()?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Some(joined);
        }
        joined.extend_from_slice(body.get(..size)?);
        body = body.get(size + 2..)?;
    }
}

/// The `/metrics` text served on `port`.
pub async fn scrape(port: u16) -> String {
    let response = http_request(port, "GET", "/metrics", "*/*")
        .await
        .expect("metrics endpoint answers");
    assert_eq!(response.status, 200);
    response.body
}

/// The value of `series` (`name` or `name{labels}`, exactly as rendered) in a `/metrics` text.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.split_whitespace().next()?.parse().ok())
}

/// SHA-256 of a file, as `sha256:<hex>`.
pub fn file_digest(path: &Path) -> std::io::Result<String> {
    use sha2::Digest;
    let data = std::fs::read(path)?;
    Ok(format!(
        "sha256:{}",
        hex::encode(sha2::Sha256::digest(&data))
    ))
}

/// A store whose reads wait until the test opens a gate: holds an import step at its first read
/// (or at its read of one key, or its copy from that key) for as long as a test needs, to replay
/// races deterministically. Listings pass: a start lists the repository's links before it
/// accepts the step. It counts the copies asked of it, by destination.
#[derive(Debug)]
pub struct GatedStore {
    inner: std::sync::Arc<dyn ferry_shared::storage::BlobStore>,
    gate: tokio::sync::watch::Receiver<bool>,
    /// Only reads of this key, and copies from it, wait; `None`: every read does (no copy).
    key: Option<String>,
    copies: std::sync::Mutex<std::collections::HashMap<String, usize>>,
}

impl GatedStore {
    /// Wraps `inner`; reads wait until `true` is sent on the returned sender.
    pub fn new(
        inner: std::sync::Arc<dyn ferry_shared::storage::BlobStore>,
    ) -> (Self, tokio::sync::watch::Sender<bool>) {
        let (open, gate) = tokio::sync::watch::channel(false);
        let store = Self {
            inner,
            gate,
            key: None,
            copies: Default::default(),
        };
        (store, open)
    }

    /// Copies asked so far to `dst`.
    pub fn copies_to(&self, dst: &str) -> usize {
        let copies = self.copies.lock().expect("copies");
        copies.get(dst).copied().unwrap_or(0)
    }

    /// Copies asked so far, to any destination.
    pub fn copies(&self) -> usize {
        self.copies.lock().expect("copies").values().sum()
    }

    /// Wraps `inner`; reads of `key` and copies from it wait until `true` is sent on the returned
    /// sender, every other read goes through.
    pub fn on_key(
        inner: std::sync::Arc<dyn ferry_shared::storage::BlobStore>,
        key: impl Into<String>,
    ) -> (Self, tokio::sync::watch::Sender<bool>) {
        let (mut store, open) = Self::new(inner);
        store.key = Some(key.into());
        (store, open)
    }
}

#[async_trait::async_trait]
impl ferry_shared::storage::BlobStore for GatedStore {
    async fn list(
        &self,
        prefix: &str,
        options: &ferry_shared::storage::ListOptions,
    ) -> Result<ferry_shared::storage::ListPage, ferry_shared::storage::StorageError> {
        self.inner.list(prefix, options).await
    }

    async fn stat(
        &self,
        key: &str,
    ) -> Result<Option<ferry_shared::storage::ObjectMeta>, ferry_shared::storage::StorageError>
    {
        self.inner.stat(key).await
    }

    async fn read(
        &self,
        key: &str,
        max_bytes: u64,
    ) -> Result<bytes::Bytes, ferry_shared::storage::StorageError> {
        if self.key.as_deref().is_none_or(|gated| gated == key) {
            let mut gate = self.gate.clone();
            let _ = gate.wait_for(|open| *open).await;
        }
        self.inner.read(key, max_bytes).await
    }

    async fn open_read(
        &self,
        key: &str,
    ) -> Result<Option<ferry_shared::storage::ObjectReader>, ferry_shared::storage::StorageError>
    {
        if self.key.as_deref().is_none_or(|gated| gated == key) {
            let mut gate = self.gate.clone();
            let _ = gate.wait_for(|open| *open).await;
        }
        self.inner.open_read(key).await
    }

    async fn copy(
        &self,
        src: &str,
        dst: &str,
        expected: Option<&ferry_shared::ids::Digest>,
    ) -> Result<ferry_shared::storage::CopyOutcome, ferry_shared::storage::StorageError> {
        *(self.copies.lock().expect("copies"))
            .entry(dst.to_owned())
            .or_default() += 1;
        if self.key.as_deref() == Some(src) {
            let mut gate = self.gate.clone();
            let _ = gate.wait_for(|open| *open).await;
        }
        self.inner.copy(src, dst, expected).await
    }

    async fn delete(
        &self,
        key: &str,
        version: &str,
    ) -> Result<ferry_shared::storage::DeleteOutcome, ferry_shared::storage::StorageError> {
        self.inner.delete(key, version).await
    }

    async fn persist(&self) -> Result<(), ferry_shared::storage::StorageError> {
        self.inner.persist().await
    }

    fn url(&self) -> String {
        format!("gated+{}", self.inner.url())
    }
}

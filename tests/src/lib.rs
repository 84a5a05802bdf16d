//! Harness for Ferry's end-to-end tests: fresh PostgreSQL databases, a sample registry written by
//! the real `docker-registry` with images pushed by `skopeo`, the scheduler and importers serving
//! real gRPC on loopback ports, and a minimal HTTP client for the registry's own API.
//!
//! Needs what `make test` sets up: PostgreSQL (`FERRY_TEST_POSTGRES_URL`, default
//! `postgres://postgres@127.0.0.1:5432/postgres`), Redis (`FERRY_TEST_REDIS_URL`, default
//! `redis://127.0.0.1:6379`), docker-registry, skopeo and umoci.

pub mod buckets;
pub mod certs;
pub mod dataset;
mod importer_harness;
mod layout_writer;
pub mod processes;
pub mod repair_seed;
pub mod throttle;

pub use importer_harness::ImporterHarness;
pub use layout_writer::LayoutWriter;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use ferry_proto::scheduler::v1::scheduler_client::SchedulerClient;
use ferry_proto::scheduler::v1::{GetMigrationSummaryRequest, MigrationSummary};
use ferry_shared::grpc::client::{ChannelOptions, Connection, Connector};

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

/// How to shape a test [`Cluster`].
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Importers to run.
    pub importers: usize,
    /// Whether importers can reach the scheduler with their completion notifications.
    pub notify: bool,
    /// Importer URLs the scheduler is given but where nothing listens.
    pub dead_importers: Vec<String>,
    /// The scheduler's TLS, token and limit flags.
    pub scheduler_security: ferry_shared::security::SecurityArgs,
    /// The importers' TLS, token and limit flags.
    pub importer_security: ferry_shared::security::SecurityArgs,
    /// How the test's own clients connect (TLS, token).
    pub client: ferry_shared::grpc::client::Connector,
    /// Give the scheduler each importer as `dns://<name>:<port>` instead of its address.
    pub importers_by_name: Option<String>,
    /// Shared storage request budgets for every process (in the cluster's Redis prefix).
    pub budgets: ferry_shared::storage::governor::GovernorArgs,
    /// Steps each importer runs at once.
    pub importer_slots: usize,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            importers: 2,
            notify: true,
            dead_importers: Vec::new(),
            scheduler_security: Default::default(),
            importer_security: Default::default(),
            client: Default::default(),
            importers_by_name: None,
            budgets: Default::default(),
            importer_slots: 2,
        }
    }
}

/// A scheduler and importers serving on loopback, in this process.
#[derive(Debug)]
pub struct Cluster {
    /// The scheduler's URL.
    pub scheduler_url: String,
    /// Scheduler database URL.
    pub database_url: String,
    /// Metadata database URL.
    pub metadata_database_url: String,
    /// The importers' URLs.
    pub importer_urls: Vec<String>,
    /// The port of the scheduler's `/metrics`.
    pub metrics_port: u16,
    /// The ports of the importers' `/metrics`.
    pub importer_metrics_ports: Vec<u16>,
    /// The prefix of the scheduler's Redis keys.
    pub redis_prefix: String,
    /// Dropped with the cluster, which stops every service as a SIGTERM would: their background
    /// work (the enqueue loop, the guard, the scans) ends with them instead of running on, with
    /// its database connections, for as long as the runtime does.
    _stop: tokio::sync::watch::Sender<()>,
    connector: Connector,
}

async fn bind() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    (listener, url)
}

impl Cluster {
    /// Starts `importers` importers and one scheduler over `storage_root`, with fresh databases.
    pub async fn start(storage_root: &Path, importers: usize) -> Self {
        Self::start_with_storage(format!("file://{}", storage_root.display()), importers).await
    }

    /// Like [`Self::start`], over the bucket `storage_url` names (`file://` or `gs://`).
    pub async fn start_with_storage(storage_url: String, importers: usize) -> Self {
        let options = ClusterOptions {
            importers,
            ..ClusterOptions::default()
        };
        Self::start_with(storage_url, options).await
    }

    /// A cluster shaped by `options`.
    pub async fn start_with(storage_url: String, options: ClusterOptions) -> Self {
        let importers = options.importers;
        let database_url = fresh_database("sched").await;
        let metadata_database_url = fresh_database("meta").await;
        let (scheduler_listener, scheduler_url) = bind().await;
        let (stop, stopped) = tokio::sync::watch::channel(());
        let shutdown = move || {
            let mut stopped = stopped.clone();
            async move {
                let _ = stopped.changed().await;
            }
        };
        let mut importer_urls = Vec::new();
        let mut importer_metrics_ports = Vec::new();
        let redis_prefix = format!("ferry-test-{}", unique_suffix());
        // Query metrics come from the stores' spans: record them in this process too.
        ferry_shared::telemetry::init_metrics_only();
        for _ in 0..importers {
            let (listener, url) = bind().await;
            importer_urls.push(url);
            let importer_metrics_port = processes::free_port();
            importer_metrics_ports.push(importer_metrics_port);
            let args = ferry_importer::config::ImporterArgs {
                listen_addr: listener.local_addr().expect("addr").to_string(),
                metadata_database_url: Some(metadata_database_url.clone()),
                storage_url: Some(storage_url.clone()),
                // Port 1: nobody listens, so every completion notification is lost.
                scheduler_url: Some(if options.notify {
                    scheduler_url.clone()
                } else {
                    "http://127.0.0.1:1".to_owned()
                }),
                max_concurrent_imports: options.importer_slots.to_string(),
                pre_import_timeout_secs: "120".into(),
                import_timeout_secs: "120".into(),
                copy_concurrency: "4".into(),
                tag_concurrency: "4".into(),
                cancel_settle_secs: "5".into(),
                cancel_poll_ms: "200".into(),
                shutdown_grace_secs: "5".into(),
                metrics_addr: format!("127.0.0.1:{importer_metrics_port}"),
                security: options.importer_security.clone(),
                redis_url: Some(redis_url()),
                redis_prefix: redis_prefix.clone(),
                governor: options.budgets.clone(),
                command: None,
            };
            let config = args.validate().expect("importer config");
            let stopped = shutdown();
            tokio::spawn(async move {
                ferry_importer::run(config, listener, stopped)
                    .await
                    .expect("importer runs");
            });
        }
        let metrics_port = processes::free_port();
        let args = ferry_scheduler::config::SchedulerArgs {
            listen_addr: scheduler_listener.local_addr().expect("addr").to_string(),
            database_url: Some(database_url.clone()),
            redis_url: Some(redis_url()),
            storage_url: Some(storage_url),
            importers: Some(
                importer_urls
                    .iter()
                    .map(|url| match &options.importers_by_name {
                        None => url.clone(),
                        Some(name) => url.replace("http://127.0.0.1", &format!("dns://{name}")),
                    })
                    .collect::<Vec<_>>()
                    .iter()
                    .chain(&options.dead_importers)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            redis_prefix: redis_prefix.clone(),
            project_segments: "2".into(),
            lease_ttl_secs: "5".into(),
            enqueue_interval_ms: "200".into(),
            guard_interval_secs: "1".into(),
            bbm_interval_secs: "1".into(),
            bbm_max_job_attempts: "5".into(),
            repair_interval_secs: "1".into(),
            metrics_addr: format!("127.0.0.1:{metrics_port}"),
            security: options.scheduler_security.clone(),
            governor: options.budgets.clone(),
            command: None,
        };
        let config = args.validate().expect("scheduler config");
        let stopped = shutdown();
        tokio::spawn(async move {
            ferry_scheduler::run(config, scheduler_listener, stopped)
                .await
                .expect("scheduler runs");
        });
        let cluster = Self {
            scheduler_url,
            database_url,
            metadata_database_url,
            importer_urls,
            metrics_port,
            importer_metrics_ports,
            redis_prefix,
            _stop: stop,
            connector: options.client.clone(),
        };
        cluster.wait_ready().await;
        cluster
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(mut client) = self.try_client().await
                && client
                    .get_migration_summary(GetMigrationSummaryRequest {})
                    .await
                    .is_ok()
            {
                return;
            }
            assert!(Instant::now() < deadline, "scheduler did not come up");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Runs an inventory to its end and returns its last progress report.
    pub async fn inventory(&self) -> ferry_proto::scheduler::v1::InventoryProgress {
        run_inventory(&mut self.client().await).await
    }

    /// The scheduler's `/metrics` text.
    pub async fn metrics(&self) -> String {
        scrape(self.metrics_port).await
    }

    /// Importer `i`'s `/metrics` text.
    pub async fn importer_metrics(&self, i: usize) -> String {
        scrape(self.importer_metrics_ports[i]).await
    }

    /// A client of the scheduler.
    pub async fn client(&self) -> SchedulerClient<Connection> {
        self.try_client().await.expect("connect to scheduler")
    }

    async fn try_client(&self) -> Result<SchedulerClient<Connection>, tonic::transport::Error> {
        self.connector
            .connect(&self.scheduler_url, ChannelOptions::default())
            .await
            .map(SchedulerClient::new)
    }

    /// Polls until no repository has work left, or panics after `timeout`.
    pub async fn wait_until_settled(&self, timeout: Duration) -> MigrationSummary {
        const PENDING: [&str; 5] = [
            "default",
            "pre_importing",
            "pre_import_done",
            "importing",
            "import_aborted",
        ];
        let mut client = self.client().await;
        let deadline = Instant::now() + timeout;
        loop {
            let summary = client
                .get_migration_summary(GetMigrationSummaryRequest {})
                .await
                .expect("summary")
                .into_inner();
            let pending: u64 = summary
                .states
                .iter()
                .filter(|s| PENDING.contains(&s.state.as_str()))
                .map(|s| s.count)
                .sum();
            if pending == 0 && summary.total > 0 {
                return summary;
            }
            assert!(
                Instant::now() < deadline,
                "migration did not settle: {summary:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Runs an inventory through `client` to its end and returns its last progress report.
pub async fn run_inventory(
    client: &mut SchedulerClient<Connection>,
) -> ferry_proto::scheduler::v1::InventoryProgress {
    let request = ferry_proto::scheduler::v1::RunInventoryRequest {};
    let mut stream = client
        .run_inventory(request)
        .await
        .expect("inventory")
        .into_inner();
    let mut last = None;
    while let Some(progress) = stream.message().await.expect("inventory progress") {
        last = Some(progress);
    }
    last.expect("the inventory reports at least once")
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
        let deadline = Instant::now() + Duration::from_secs(20);
        while http_request(port, "GET", "/v2/", "")
            .await
            .map(|r| r.status)
            != Some(200)
        {
            assert!(
                Instant::now() < deadline,
                "docker-registry did not come up on {port}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        server
    }

    /// The digest the registry serves for `repository:reference`, or `None` on 404.
    pub async fn manifest_digest(&self, repository: &str, reference: &str) -> Option<String> {
        const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
            application/vnd.oci.image.manifest.v1+json, \
            application/vnd.docker.distribution.manifest.list.v2+json, \
            application/vnd.docker.distribution.manifest.v2+json";
        let response = http_request(
            self.port,
            "HEAD",
            &format!("/v2/{repository}/manifests/{reference}"),
            ACCEPT,
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

/// One HTTP/1.1 request to 127.0.0.1:`port`; `None` if the connection fails.
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
    let text = String::from_utf8_lossy(&raw);
    let head = text.split("\r\n\r\n").next()?;
    let mut lines = head.lines();
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_owned(), value.trim().to_owned()))
        .collect();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    Some(HttpResponse {
        status,
        headers,
        body,
    })
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
/// (or at its read of one key) for as long as a test needs, to replay races deterministically.
#[derive(Debug)]
pub struct GatedStore {
    inner: std::sync::Arc<dyn ferry_shared::storage::BlobStore>,
    gate: tokio::sync::watch::Receiver<bool>,
    /// Only reads of this key wait; `None`: every read does.
    key: Option<String>,
}

impl GatedStore {
    /// Wraps `inner`; reads wait until `true` is sent on the returned sender.
    pub fn new(
        inner: std::sync::Arc<dyn ferry_shared::storage::BlobStore>,
    ) -> (Self, tokio::sync::watch::Sender<bool>) {
        let (open, gate) = tokio::sync::watch::channel(false);
        let key = None;
        (Self { inner, gate, key }, open)
    }

    /// Wraps `inner`; reads of `key` wait until `true` is sent on the returned sender, every
    /// other read goes through.
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

    async fn copy(
        &self,
        src: &str,
        dst: &str,
        expected: Option<&ferry_shared::ids::Digest>,
    ) -> Result<ferry_shared::storage::CopyOutcome, ferry_shared::storage::StorageError> {
        self.inner.copy(src, dst, expected).await
    }

    async fn persist(&self) -> Result<(), ferry_shared::storage::StorageError> {
        self.inner.persist().await
    }

    fn url(&self) -> String {
        format!("gated+{}", self.inner.url())
    }
}

//! An importer (the domain service, no gRPC) over a local bucket in a temporary directory and a
//! fresh metadata database, for tests that drive steps and read the database.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sqlx::{PgPool, Row};

use ferry_importer::notifier::Notifier;
use ferry_importer::service::{ImportService, Importer, StepLimits};
use ferry_importer::store::MetadataStore;
use ferry_proto::common::v1::ImportType;
use ferry_proto::importer::v1::StartOutcome;

use crate::{LayoutWriter, fresh_database, wait_until};

/// See the module documentation.
#[derive(Debug)]
pub struct ImporterHarness {
    /// The importer.
    pub importer: Importer,
    /// The metadata database.
    pub pool: PgPool,
    _dir: tempfile::TempDir,
    /// The bucket root (holds `docker/`).
    pub root: PathBuf,
}

impl ImporterHarness {
    /// A fresh importer, bucket and database.
    pub async fn new() -> Self {
        Self::with_storage(|store| store).await
    }

    /// Like [`Self::new`], with the bucket's store wrapped by `wrap` (to inject faults).
    pub async fn with_storage(
        wrap: impl FnOnce(
            Arc<dyn ferry_shared::storage::BlobStore>,
        ) -> Arc<dyn ferry_shared::storage::BlobStore>,
    ) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().to_path_buf();
        std::fs::create_dir_all(root.join("docker/registry/v2/repositories")).expect("mkdir");
        let url = fresh_database("importer").await;
        let db = MetadataStore::connect(&url, 4).await.expect("connect");
        db.migrate().await.expect("migrate");
        let storage =
            ferry_shared::storage::open(&format!("file://{}", root.display())).expect("storage");
        // Nobody listens on port 1: notifications give up at once; the database is what we check.
        let notifier = Notifier::new("http://127.0.0.1:1", Duration::ZERO).expect("notifier");
        let limits = StepLimits {
            max_concurrent_imports: 8,
            pre_import_timeout: Duration::from_secs(60),
            import_timeout: Duration::from_secs(60),
            copy_concurrency: 4,
            tag_concurrency: 4,
            cancel_poll: Duration::from_millis(200),
        };
        let importer = Importer::new(wrap(storage), db, Some(notifier), limits);
        let pool = PgPool::connect(&url).await.expect("pool");
        Self {
            importer,
            pool,
            _dir: dir,
            root,
        }
    }

    /// Writes old-layout data into the bucket.
    pub fn layout(&self) -> LayoutWriter {
        LayoutWriter::new(&self.root)
    }

    /// Runs a step to its end and returns (status, error).
    pub async fn run(&self, path: &str, import_type: ImportType) -> (String, Option<String>) {
        let response = self
            .importer
            .start_import(path, import_type, 0, 0)
            .await
            .expect("start");
        assert_eq!(response.outcome(), StartOutcome::Accepted);
        wait_until(
            &format!("the step on {path} to end"),
            Duration::from_secs(30),
            async || {
                let row = sqlx::query(
                    "SELECT migration_status, migration_error FROM repositories WHERE path = $1",
                )
                .bind(path)
                .fetch_one(&self.pool)
                .await
                .unwrap_or_else(|error| panic!("the row of {path}: {error}"));
                let status: String = row.get("migration_status");
                if status.ends_with("_in_progress") {
                    Err(status)
                } else {
                    Ok((status, row.get("migration_error")))
                }
            },
        )
        .await
    }

    /// Rows of `table` (which has a `repository_id`) belonging to the repository at `path`.
    pub async fn count(&self, table: &str, path: &str) -> i64 {
        sqlx::query_scalar(&format!(
            "SELECT count(*) FROM {table} x JOIN repositories r ON r.id = x.repository_id WHERE r.path = $1"
        ))
        .bind(path)
        .fetch_one(&self.pool)
        .await
        .expect("count")
    }

    /// Whether blob `digest` sits under `gitlab/` in the bucket.
    pub fn copied(&self, digest: &str) -> bool {
        let hex = &digest["sha256:".len()..];
        self.root
            .join(format!(
                "gitlab/docker/registry/v2/blobs/sha256/{}/{hex}/data",
                &hex[..2]
            ))
            .exists()
    }
}

/// Serves `importer` as `ferry.importer.v1.Importer` on a free loopback port (plaintext, no
/// tokens) until the test ends; returns the port.
pub async fn serve_importer(importer: Importer) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let routes = tonic::service::Routes::new(
        ferry_proto::importer::v1::importer_server::ImporterServer::new(
            ferry_importer::grpc::ImporterGrpc(importer),
        ),
    );
    tokio::spawn(ferry_shared::grpc::serve(
        listener,
        routes,
        &[],
        ferry_shared::grpc::ServeOptions::default(),
        std::future::pending(),
    ));
    port
}

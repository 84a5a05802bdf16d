//! Ferry's importer: walks a repository's old storage layout, registers its tagged manifests and
//! blobs in the metadata database (tags only in the final pass), copies blobs into the `gitlab/`
//! prefix and reports each step's end to the scheduler.
//!
//! [`service::ImportService`] is the domain; [`grpc::ImporterGrpc`] is its tonic adapter.

pub mod config;
pub mod error;
pub mod gc;
pub mod grpc;
pub mod listing;
pub mod manifest;
pub mod metrics;
pub mod notifier;
pub mod oneshot;
pub mod plan;
pub mod registry;
pub mod running;
pub mod service;
pub mod store;
pub mod verify;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tonic::service::Routes;

use ferry_proto::importer::v1::importer_server::ImporterServer;

use ferry_shared::lifecycle::Tasks;
use ferry_shared::metrics::Registry;
use ferry_shared::security::Security;
use ferry_shared::startup::{bind_metrics, open_database};

use crate::config::ImporterConfig;
use crate::metrics::{ImporterMetrics, RegistryMetrics};
use crate::notifier::Notifier;
use crate::service::Importer;
use crate::store::MetadataStore;

/// How long an importer keeps retrying a completion notification.
const NOTIFY_GIVE_UP_AFTER: Duration = Duration::from_secs(3600);
/// How often the database pool's connections are reported to the metrics.
const POOL_REPORT_PERIOD: Duration = Duration::from_secs(5);
/// How often the registered namespaces and repositories are counted for the metrics.
const REGISTERED_COUNTS_PERIOD: Duration = Duration::from_secs(60);

/// Errors that stop the importer from starting or serving.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// The metadata database is unreachable.
    #[error("metadata database: {0}")]
    Database(#[from] sqlx::Error),
    /// Its migrations failed.
    #[error("metadata database migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The storage URL is unusable.
    #[error(transparent)]
    Storage(#[from] ferry_shared::storage::StorageError),
    /// The metrics endpoint cannot listen.
    #[error("metrics endpoint: {0}")]
    Metrics(std::io::Error),
    /// The registry endpoint cannot listen.
    #[error("registry endpoint (FERRY_REGISTRY_ADDR): {0}")]
    Registry(std::io::Error),
    /// The gRPC transport failed.
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// Redis (holding the storage budgets) is unreachable.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// TLS or token files could not be loaded.
    #[error("{0}")]
    Security(String),
    /// The database pool is larger than PostgreSQL could ever grant.
    #[error(transparent)]
    ConnectionLimit(#[from] store::ConnectionLimitError),
}

/// Applies the metadata database's pending migrations (`ferry-importer migrate`) and returns the
/// schema version it is at.
pub async fn migrate_database(url: &str) -> Result<i64, StartupError> {
    let db = MetadataStore::connect(url, 1).await?;
    db.migrate().await?;
    Ok(store::MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0))
}

/// Connects, migrates the metadata database and serves on `listener` until `shutdown`.
///
/// Everything runs on one [`Tasks`]: one stop token, one tracker (the steps run on it too).
/// The stop goes in this order:
/// 1. `shutdown` completes (SIGTERM): the token is cancelled, so new starts are refused
///    (`UNAVAILABLE`), and every running step is stopped, to record its end as failed with
///    reason `shutdown` and be handed back to the scheduler (retried without counting a retry);
/// 2. the gRPC server stops accepting and finishes the calls in flight;
/// 3. the stopped steps record their end and notify, and the metrics endpoint and pool reports
///    end, all within `FERRY_SHUTDOWN_GRACE_SECS`; a step still running past it is named in the
///    log (the scheduler's guard picks it up).
pub async fn run(
    config: ImporterConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), StartupError> {
    let security = Security::start(&config.security).map_err(StartupError::Security)?;
    let storage = ferry_shared::storage::open_governed(
        &config.storage_url,
        config.budgets.governor().await?,
    )?;
    let mut registry = Registry::with_prefix("ferry");
    ferry_shared::metrics::register_common(&mut registry);
    ferry_shared::metrics::STORAGE.budget_floors(&config.budgets.config);
    let metrics = ImporterMetrics::register(&mut registry);
    let registry_metrics = RegistryMetrics::register(&mut registry);
    let metrics_listener = bind_metrics(config.metrics_addr)
        .await
        .map_err(StartupError::Metrics)?;
    let registry_listener = match config.registry_addr {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(StartupError::Registry)?,
        ),
        None => None,
    };
    let pool_size = config.db_max_connections;
    let db = open_database(
        "metadata database",
        || MetadataStore::connect(&config.metadata_database_url, pool_size),
        |db| async move { db.migrate().await },
    )
    .await?;
    if let Some(problem) = db.connection_limit_problem().await? {
        return Err(problem.into());
    }
    let tasks = Tasks::new();
    if let Some(listener) = metrics_listener {
        let registry = Arc::new(registry);
        tasks.spawn("metrics endpoint", |stop| {
            ferry_shared::metrics::serve(listener, registry, stop.cancelled_owned())
        });
    }
    tasks.spawn_until_stopped("pool report", {
        let db = db.clone();
        async move {
            loop {
                db.report_pool();
                tokio::time::sleep(POOL_REPORT_PERIOD).await;
            }
        }
    });
    tasks.spawn_until_stopped("registered counts", {
        let (db, metrics) = (db.clone(), metrics.clone());
        async move {
            loop {
                match db.registered_counts().await {
                    Ok(counts) => metrics.registered(&counts),
                    Err(error) => tracing::warn!(%error, "counting registered repositories failed"),
                }
                tokio::time::sleep(REGISTERED_COUNTS_PERIOD).await;
            }
        }
    });
    if let Some(listener) = registry_listener {
        let endpoint = registry::Registry::new(
            Arc::clone(&storage),
            db.clone(),
            security.tokens.clone(),
            registry_metrics,
        );
        tracing::info!(addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "registry endpoint serving");
        // TLS when this process serves TLS (a CA alone only secures its calls out).
        let tls = security
            .tls
            .clone()
            .filter(|tls| tls.https_server().is_some());
        tasks.spawn("registry endpoint", |stop| {
            registry::serve(listener, endpoint, tls, stop)
        });
    }
    let notifier = Notifier::with_connector(
        &config.scheduler_url,
        NOTIFY_GIVE_UP_AFTER,
        &security.connector(),
    )?;
    let importer = Importer::new(storage, db, Some(notifier), config.limits.clone())
        .with_metrics(metrics)
        .with_tasks(&tasks);
    tracing::info!(addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), storage = %config.storage_url, "importer serving");
    let routes = Routes::new(
        ImporterServer::new(grpc::ImporterGrpc(importer.clone()))
            .max_decoding_message_size(security.limits.max_request_bytes),
    );
    let stopping = tasks.clone();
    let on_shutdown = async move {
        tokio::select! {
            () = shutdown => {}
            () = stopping.stopped() => {}
        }
        // Refuse new starts and stop running steps before the server drains its requests.
        importer.begin_shutdown();
    };
    let served = ferry_shared::grpc::serve(
        listener,
        routes,
        &["ferry.importer.v1.Importer"],
        security.serve_options(grpc::READ_METHODS),
        on_shutdown,
    )
    .await;
    match tasks.stop_and_wait(config.shutdown_grace).await {
        Ok(()) => tracing::info!("importer stopped; every step recorded its end"),
        Err(late) => tracing::warn!(
            grace_secs = config.shutdown_grace.as_secs(),
            %late,
            "grace period over with steps still stopping"
        ),
    }
    served?;
    Ok(())
}

/// Runs the one-shot import (`ferry-importer import`): migrates the metadata database, then
/// imports the selection straight from storage and returns the summary.
pub async fn run_import(config: config::OneShotConfig) -> Result<oneshot::Summary, StartupError> {
    let storage = ferry_shared::storage::open_governed(
        &config.storage_url,
        config.budgets.governor().await?,
    )?;
    let db =
        MetadataStore::connect(&config.metadata_database_url, config.db_max_connections).await?;
    db.migrate().await?;
    if let Some(problem) = db.connection_limit_problem().await? {
        return Err(problem.into());
    }
    let concurrency = config.limits.max_concurrent_imports;
    let tag_concurrency = config.limits.tag_concurrency;
    let importer = Importer::new(std::sync::Arc::clone(&storage), db, None, config.limits);
    Ok(oneshot::run(
        &importer,
        storage.as_ref(),
        config.selection,
        config.dry_run,
        concurrency,
        tag_concurrency,
    )
    .await?)
}

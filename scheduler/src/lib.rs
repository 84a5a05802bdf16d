//! Ferry's scheduler: owns every repository's migration state machine in PostgreSQL, discovers
//! repositories in the bucket, and, under a Redis lease, starts pre-imports and then final imports
//! on the importers within a capacity.
//!
//! [`service::SchedulerService`] is the domain; [`grpc::SchedulerGrpc`] is its tonic adapter;
//! [`store::SchedulerStore`] holds every SQL statement.

pub mod bbm;
pub mod config;
pub mod ctl;
pub mod enqueue;
pub mod error;
pub mod gc;
pub mod grpc;
pub mod guard;
pub mod importers;
pub mod inventory;
pub mod lease;
pub mod limits;
pub mod metrics;
pub mod rebuild;
pub mod reconcile;
pub mod repair;
pub mod service;
pub mod settings_api;
pub mod state;
pub mod store;
pub mod verify;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tonic::service::Routes;

use ferry_proto::scheduler::v1::scheduler_server::SchedulerServer;

use ferry_shared::lifecycle::Tasks;
use ferry_shared::metrics::Registry;
use ferry_shared::security::Security;
use ferry_shared::startup::{bind_metrics, open_database, with_retries};

use crate::bbm::WorkRegistry;
use crate::config::SchedulerConfig;
use crate::enqueue::{EnqueueConfig, Enqueuer};
use crate::importers::ImporterPool;
use crate::lease::{Lease, LeaseConfig};
use crate::repair::RepairScan;
use crate::repair::restore::RestoreMissingRepositories;
use crate::service::Scheduler;
use crate::store::SchedulerStore;

/// How often importer DNS names are re-resolved and every importer asked for its load.
const IMPORTER_REFRESH: std::time::Duration = std::time::Duration::from_secs(10);

/// How long the enqueuer waits at shutdown for the starts in flight (an importer round trip
/// each); a start cut short is found by the guard of the next lease holder.
const START_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// How long every task together gets to stop after the server has drained.
const SHUTDOWN_DEADLINE: std::time::Duration = std::time::Duration::from_secs(15);

/// The background migration work functions this scheduler runs.
pub fn background_work(importers: Arc<ImporterPool>) -> WorkRegistry {
    let mut work = WorkRegistry::default();
    let restore = Arc::new(RestoreMissingRepositories::new(importers));
    if let Err(error) = work.register(restore) {
        tracing::error!(%error, "background migration work not registered");
    }
    work
}

/// How often the migration's gauges (repositories per state, rate, ETA, pool) are refreshed.
const GAUGE_REFRESH: std::time::Duration = std::time::Duration::from_secs(15);

/// Refreshes the gauges read from the database, every [`GAUGE_REFRESH`], on every replica (all
/// report the same figures; dashboards take the max).
async fn report_gauges(store: SchedulerStore, metrics: metrics::MigrationMetrics) {
    loop {
        store.report_pool();
        match store.migration_progress().await {
            Ok(progress) => metrics.progress(&progress),
            Err(error) => tracing::warn!(%error, "reading the migration's progress failed"),
        }
        match store.settings().await {
            Ok(settings) => {
                metrics.settings(&settings);
                match guard::steps_past_time_limit(&store, &settings).await {
                    Ok((pre, final_imports)) => {
                        metrics.steps_past_time_limit(pre, final_imports);
                    }
                    Err(error) => tracing::warn!(%error, "counting steps past their limit failed"),
                }
            }
            Err(error) => tracing::warn!(%error, "reading the settings failed"),
        }
        match store.verification_counts().await {
            Ok(counts) => metrics.verification_counts(&counts),
            Err(error) => tracing::warn!(%error, "reading the verification counts failed"),
        }
        tokio::time::sleep(GAUGE_REFRESH).await;
    }
}

/// Errors that stop the scheduler from starting or serving.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// The scheduler database is unreachable.
    #[error("scheduler database: {0}")]
    Database(#[from] sqlx::Error),
    /// Its migrations failed.
    #[error("scheduler database migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Redis is unreachable.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The storage URL is unusable.
    #[error(transparent)]
    Storage(#[from] ferry_shared::storage::StorageError),
    /// The metrics endpoint cannot listen.
    #[error("metrics endpoint: {0}")]
    Metrics(std::io::Error),
    /// The gRPC transport failed.
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// TLS or token files could not be loaded.
    #[error("{0}")]
    Security(String),
}

/// Applies the scheduler database's pending migrations (`ferry-scheduler migrate`) and returns
/// the schema version it is at.
pub async fn migrate_database(url: &str) -> Result<i64, StartupError> {
    let store = SchedulerStore::connect(url, 1).await?;
    store.migrate().await?;
    Ok(store::MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0))
}

/// Who this replica is, for the lease holder's name: host (Kubernetes sets `HOSTNAME` to the
/// pod), process and listening address.
fn replica_identity(listen_addr: &str) -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown-host".to_owned());
    format!("{host}/pid-{}/{listen_addr}", std::process::id())
}

/// Connects, migrates, starts the enqueue loop and serves on `listener` until `shutdown`.
///
/// Everything runs on one [`Tasks`]: one stop token, one tracker. The stop goes in this order:
/// 1. `shutdown` completes (SIGTERM) and the token is cancelled: the gRPC server stops
///    accepting; the enqueuer stops claiming, releases the lease (another replica takes over at
///    once) and waits up to [`START_GRACE`] for the starts in flight; the repair scan flushes
///    what it stashed; a background migration job is cut short (it is retried); the periodic
///    loops and the metrics endpoint end.
/// 2. The server finishes the calls in flight (a step's end that finds the enqueuer gone is
///    answered `UNAVAILABLE`, and the importer reports it to another replica).
/// 3. Every task is waited for, up to [`SHUTDOWN_DEADLINE`]; any still running is named in the
///    log and dropped with the runtime.
pub async fn run(
    config: SchedulerConfig,
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
    let migration_metrics = metrics::MigrationMetrics::register(&mut registry);
    let bbm_metrics = metrics::BbmMetrics::register(&mut registry);
    let repair_metrics = metrics::RepairMetrics::register(&mut registry);
    let metrics_listener = bind_metrics(config.metrics_addr)
        .await
        .map_err(StartupError::Metrics)?;
    let store = open_database(
        "scheduler database",
        || SchedulerStore::connect(&config.database_url, 10),
        |store| async move { store.migrate().await },
    )
    .await?;
    let redis_client = redis::Client::open(config.redis_url.as_str())?;
    let redis = with_retries("connecting to Redis", || {
        redis::aio::ConnectionManager::new(redis_client.clone())
    })
    .await?;
    let identity = replica_identity(&config.listen_addr.to_string());
    let wake_channel = format!("{}:enqueuer:wake", config.redis_prefix);
    let lease = Lease::new(
        redis.clone(),
        LeaseConfig {
            key: format!("{}:enqueuer:lease", config.redis_prefix),
            fence_key: format!("{}:enqueuer:fence", config.redis_prefix),
            ttl: config.lease_ttl,
            holder: identity.clone(),
        },
    );
    // A pending trigger lives at most two loop periods: longer would only delay wake-ups.
    let triggers = enqueue::Triggers::new(
        redis,
        &config.redis_prefix,
        wake_channel.clone(),
        identity.clone(),
        (config.enqueue_interval * 2).max(std::time::Duration::from_secs(1)),
    )
    .with_counters(
        migration_metrics.triggers.clone(),
        migration_metrics.deduplicated_triggers.clone(),
    );
    let importers = Arc::new(ImporterPool::with_connector(
        &config.importers,
        security.connector(),
    )?);
    let members = importers.refresh().await;
    tracing::info!(?members, "importers");

    let tasks = Tasks::new();
    tasks.spawn_until_stopped("importer refresh", {
        let importers = Arc::clone(&importers);
        async move {
            loop {
                tokio::time::sleep(IMPORTER_REFRESH).await;
                importers.refresh().await;
            }
        }
    });
    let guard = guard::Guard {
        store: store.clone(),
        importers: Arc::clone(&importers),
        metrics: migration_metrics.clone(),
    };
    let (enqueuer, enqueue_handle) = Enqueuer::new(
        store.clone(),
        lease.clone(),
        triggers.clone(),
        EnqueueConfig {
            interval: config.enqueue_interval,
            guard_interval: config.guard_interval,
        },
        guard,
        Arc::clone(&importers),
        Arc::clone(&storage),
        migration_metrics.clone(),
    );
    tasks.spawn_until_stopped(
        "wake-up listener",
        enqueue::forward_wakeups(redis_client, wake_channel, enqueue_handle.clone()),
    );
    tasks.spawn("enqueuer", |stop| enqueuer.run(stop, START_GRACE));
    tasks.spawn_until_stopped(
        "gauges",
        report_gauges(store.clone(), migration_metrics.clone()),
    );
    if let Some(listener) = metrics_listener {
        let registry = Arc::new(registry);
        tasks.spawn("metrics endpoint", |stop| {
            ferry_shared::metrics::serve(listener, registry, stop.cancelled_owned())
        });
    }
    let bbm_worker = bbm::Worker::new(
        store.clone(),
        background_work(Arc::clone(&importers)),
        config.bbm.clone(),
    )
    .with_metrics(bbm_metrics);
    tasks.spawn("background migrations", |stop| {
        bbm_worker.run(stop.cancelled_owned())
    });
    let repair_scan = RepairScan::new(
        store.clone(),
        Arc::clone(&importers),
        enqueue_handle.lease(),
        identity,
        config.repair.clone(),
        repair_metrics,
    );
    tasks.spawn("repair scan", |stop| repair_scan.run(stop));
    let scheduler = Scheduler::new(
        store,
        storage,
        triggers,
        lease,
        importers,
        config.project_segments,
    )
    .with_metrics(migration_metrics)
    .with_enqueuer(enqueue_handle)
    .with_tasks(tasks.clone());
    tracing::info!(addr = %config.listen_addr, importers = ?config.importers, "scheduler serving");
    let routes = Routes::new(
        SchedulerServer::new(grpc::SchedulerGrpc(scheduler))
            .max_decoding_message_size(security.limits.max_request_bytes),
    );
    let stopping = tasks.clone();
    let served = ferry_shared::grpc::serve(
        listener,
        routes,
        &["ferry.scheduler.v1.Scheduler"],
        security.serve_options(grpc::READ_METHODS),
        async move {
            tokio::select! {
                () = shutdown => stopping.stop(),
                () = stopping.stopped() => {}
            }
        },
    )
    .await;
    if let Err(late) = tasks.stop_and_wait(SHUTDOWN_DEADLINE).await {
        tracing::warn!(%late, "scheduler stopped with tasks still running");
    } else {
        tracing::info!("scheduler stopped");
    }
    served?;
    Ok(())
}

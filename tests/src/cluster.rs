//! A scheduler and importers serving on loopback in the test's own process, over real gRPC,
//! PostgreSQL and Redis.

use std::path::Path;
use std::time::Duration;

use tokio::net::TcpListener;

use ferry_proto::scheduler::v1::scheduler_client::SchedulerClient;
use ferry_proto::scheduler::v1::{
    GetMigrationSummaryRequest, MigrationSummary, SetMigrationEnabledRequest,
};
use ferry_shared::grpc::client::{ChannelOptions, Connection, Connector};

use crate::wait::{poll_until, wait_until};
use crate::{fresh_database, processes, redis_url, scrape, unique_suffix};

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
    /// Each importer's pre-import and final import time limit, in seconds (`ferryctl gc`'s
    /// window must be longer).
    pub step_timeout_secs: u64,
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
            step_timeout_secs: 120,
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
    /// The ports of the importers' registry endpoints.
    pub importer_registry_ports: Vec<u16>,
    /// The prefix of the scheduler's Redis keys.
    pub redis_prefix: String,
    /// Dropped with the cluster, which stops every service as a SIGTERM would: their background
    /// work (the enqueue loop, the guard, the scans) ends with them instead of running on, with
    /// its database connections, for as long as the runtime does.
    _stop: tokio::sync::watch::Sender<()>,
    connector: Connector,
    /// The scheduler's configuration, to start it again ([`Self::start_scheduler`]).
    scheduler_config: ferry_scheduler::config::SchedulerConfig,
    /// The scheduler while it runs: its own stop (dropping it stops the scheduler alone) and
    /// its thread.
    scheduler: Option<(tokio::sync::watch::Sender<()>, std::thread::JoinHandle<()>)>,
}

async fn bind() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    (listener, url)
}

/// Runs a service on a runtime and threads of its own, as its own process would: tokio does not
/// preempt a task, so on a shared runtime one service's busy tasks would hold up another's (an
/// importer's step delaying the scheduler's reaction to a step's end), which no deployment does.
fn spawn_service<Serve, Served>(
    name: &'static str,
    listener: TcpListener,
    serve: Serve,
) -> std::thread::JoinHandle<()>
where
    Serve: FnOnce(TcpListener) -> Served + Send + 'static,
    Served: std::future::Future<Output = ()>,
{
    let listener = listener.into_std().expect("listener");
    std::thread::Builder::new()
        .name(format!("test-{name}"))
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name(format!("test-{name}"))
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                serve(TcpListener::from_std(listener).expect("listener")).await;
            });
        })
        .expect("service thread")
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
        let mut importer_registry_ports = Vec::new();
        let redis_prefix = format!("ferry-test-{}", unique_suffix());
        // Query metrics come from the stores' spans: record them in this process too.
        ferry_shared::telemetry::init_metrics_only();
        for _ in 0..importers {
            let (listener, url) = bind().await;
            importer_urls.push(url);
            let importer_metrics_port = processes::free_port();
            importer_metrics_ports.push(importer_metrics_port);
            let importer_registry_port = processes::free_port();
            importer_registry_ports.push(importer_registry_port);
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
                pre_import_timeout_secs: options.step_timeout_secs.to_string(),
                import_timeout_secs: options.step_timeout_secs.to_string(),
                copy_concurrency: "4".into(),
                tag_concurrency: "4".into(),
                cancel_poll_ms: "200".into(),
                db_max_connections: "auto".into(),
                shutdown_grace_secs: "5".into(),
                metrics_addr: format!("127.0.0.1:{importer_metrics_port}"),
                registry_addr: format!("127.0.0.1:{importer_registry_port}"),
                security: options.importer_security.clone(),
                redis_url: Some(redis_url()),
                redis_prefix: redis_prefix.clone(),
                governor: options.budgets.clone(),
                command: None,
            };
            let config = args.validate().expect("importer config");
            let stopped = shutdown();
            drop(spawn_service(
                "importer",
                listener,
                move |listener| async move {
                    ferry_importer::run(config, listener, stopped)
                        .await
                        .expect("importer runs");
                },
            ));
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
        let scheduler_config = args.validate().expect("scheduler config");
        let scheduler = Some(spawn_scheduler(
            scheduler_config.clone(),
            scheduler_listener,
        ));
        let cluster = Self {
            scheduler_url,
            database_url,
            metadata_database_url,
            importer_urls,
            metrics_port,
            importer_metrics_ports,
            importer_registry_ports,
            redis_prefix,
            _stop: stop,
            connector: options.client.clone(),
            scheduler_config,
            scheduler,
        };
        cluster.wait_ready().await;
        cluster
    }

    /// Stops the scheduler alone, as a SIGTERM would, and waits until it has (the importers
    /// keep running; their completion notifications fail meanwhile).
    pub async fn stop_scheduler(&mut self) {
        if let Some((stop, thread)) = self.scheduler.take() {
            drop(stop);
            tokio::task::spawn_blocking(move || thread.join())
                .await
                .expect("join")
                .expect("the scheduler stopped cleanly");
        }
    }

    /// Starts the scheduler again on its address and database (after [`Self::stop_scheduler`]),
    /// and waits until it answers.
    pub async fn start_scheduler(&mut self) {
        assert!(self.scheduler.is_none(), "the scheduler runs already");
        let listener = TcpListener::bind(self.scheduler_config.listen_addr)
            .await
            .expect("bind the scheduler's address again");
        self.scheduler = Some(spawn_scheduler(self.scheduler_config.clone(), listener));
        self.wait_ready().await;
    }

    async fn wait_ready(&self) {
        wait_until(
            "the scheduler to answer",
            Duration::from_secs(30),
            async || {
                let mut client = self.try_client().await.map_err(|e| e.to_string())?;
                client
                    .get_migration_summary(GetMigrationSummaryRequest {})
                    .await
                    .map(drop)
                    .map_err(|status| status.to_string())
            },
        )
        .await;
    }

    /// Enables the migration at capacity 4 and waits up to `within` until it settles.
    pub async fn migrate(&self, within: Duration) -> MigrationSummary {
        self.client()
            .await
            .set_migration_enabled(SetMigrationEnabledRequest {
                enabled: true,
                capacity: Some(4),
            })
            .await
            .expect("enable");
        self.wait_until_settled(within).await
    }

    /// Runs an inventory to its end and returns its last progress report.
    pub async fn inventory(&self) -> ferry_proto::scheduler::v1::InventoryProgress {
        run_inventory(&mut self.client().await).await
    }

    /// Runs the real `ferryctl ARGS` against the scheduler (built by `make test`).
    pub fn ferryctl(&self, args: &[&str]) -> std::process::Output {
        crate::processes::ferryctl(&self.scheduler_url, args)
    }

    /// The scheduler's `/metrics` text.
    pub async fn metrics(&self) -> String {
        scrape(self.metrics_port).await
    }

    /// Importer `i`'s `/metrics` text.
    pub async fn importer_metrics(&self, i: usize) -> String {
        scrape(self.importer_metrics_ports[i]).await
    }

    /// `series` (exactly as rendered) summed over the importers' `/metrics`.
    pub async fn importers_metric_sum(&self, series: &str) -> f64 {
        self.importers_metric(series).await.into_iter().sum()
    }

    /// `series` (exactly as rendered) on each importer, in order (0 where absent).
    pub async fn importers_metric(&self, series: &str) -> Vec<f64> {
        let mut values = Vec::new();
        for i in 0..self.importer_metrics_ports.len() {
            values.push(crate::metric(&self.importer_metrics(i).await, series).unwrap_or(0.0));
        }
        values
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
        // Polled with one count on the database: the summary's several aggregates every 100 ms
        // would take a share of the CPU from the migration being measured.
        let db = sqlx::PgPool::connect(&self.database_url)
            .await
            .expect("scheduler database");
        let settled = poll_until(timeout, Duration::from_millis(100), async || {
            let (pending, total): (i64, i64) = sqlx::query_as(
                "SELECT count(*) FILTER (WHERE migration_state = ANY($1)), count(*) \
                 FROM container_repositories",
            )
            .bind(&ferry_scheduler::state::MigrationState::PENDING[..])
            .fetch_one(&db)
            .await
            .expect("count");
            if pending == 0 && total > 0 {
                Ok(())
            } else {
                Err((pending, total))
            }
        })
        .await;
        settled.unwrap_or_else(|(pending, total)| {
            panic!("migration did not settle: {pending} of {total} repositories pending")
        });
        db.close().await;
        self.client()
            .await
            .get_migration_summary(GetMigrationSummaryRequest {})
            .await
            .expect("summary")
            .into_inner()
    }
}

/// Runs a scheduler with `config` on `listener` on a thread of its own, stopped when the
/// returned sender is dropped.
fn spawn_scheduler(
    config: ferry_scheduler::config::SchedulerConfig,
    listener: TcpListener,
) -> (tokio::sync::watch::Sender<()>, std::thread::JoinHandle<()>) {
    let (stop, mut stopped) = tokio::sync::watch::channel(());
    let thread = spawn_service("scheduler", listener, move |listener| async move {
        let stopped = async move {
            let _ = stopped.changed().await;
        };
        ferry_scheduler::run(config, listener, stopped)
            .await
            .expect("scheduler runs");
    });
    (stop, thread)
}

/// How many repositories `summary` counts in `state`.
pub fn state_count(summary: &MigrationSummary, state: &str) -> u64 {
    summary
        .states
        .iter()
        .filter(|s| s.state == state)
        .map(|s| s.count)
        .sum()
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

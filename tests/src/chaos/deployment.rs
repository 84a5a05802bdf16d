//! The deployment a chaos schedule runs against: two scheduler replicas, three importers, and a
//! Redis of its own (so that killing it and restarting it empty harms no other test), over fresh
//! scheduler and metadata databases. Every process can be killed, frozen, stopped gracefully and
//! started again on the same port; each incarnation logs to a file of its own.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ferry_proto::scheduler::v1::scheduler_client::SchedulerClient;
use ferry_proto::scheduler::v1::{SetMigrationEnabledRequest, UpdateSettingsRequest};
use ferry_shared::grpc::client::{ChannelOptions, Connection, Connector};

use crate::processes::{Process, free_port};

/// Lease TTL of the schedulers: short, so that a frozen holder is replaced within seconds.
pub const LEASE_TTL: Duration = Duration::from_secs(3);
/// Scheduler replicas.
pub const SCHEDULERS: usize = 2;
/// Importers.
pub const IMPORTERS: usize = 3;

/// One service: its port, its current incarnation (if running), and whether it is frozen.
#[derive(Debug)]
pub struct Service {
    /// `scheduler-0`, `importer-2`, ...
    pub name: String,
    /// Its gRPC port, kept across restarts.
    pub port: u16,
    /// The running incarnation, if any.
    pub process: Option<Process>,
    /// Incarnations started so far (names the log files).
    pub incarnations: u32,
    /// SIGSTOPped and not yet continued.
    pub frozen: bool,
}

/// A Redis server of the deployment's own, without persistence: a restart is empty.
#[derive(Debug)]
pub struct OwnRedis {
    /// Its port on 127.0.0.1.
    pub port: u16,
    child: Option<Child>,
}

impl OwnRedis {
    fn start(port: u16) -> Self {
        let mut redis = Self { port, child: None };
        redis.restart();
        redis
    }

    /// Starts it (again), empty, and waits until it answers.
    pub fn restart(&mut self) {
        self.kill();
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (run `make test`: setup.sh installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills it (SIGKILL); everything it held is lost.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether it runs.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// See the module documentation.
#[derive(Debug)]
pub struct Deployment {
    /// Where every incarnation logs (`NAME.N.log`).
    pub logs: PathBuf,
    /// The scheduler replicas.
    pub schedulers: Vec<Service>,
    /// The importers.
    pub importers: Vec<Service>,
    /// The deployment's Redis.
    pub redis: OwnRedis,
    /// The scheduler database.
    pub database: String,
    /// The metadata database.
    pub metadata: String,
    storage: String,
}

impl Deployment {
    /// Starts every service over the bucket at `root`, with the given databases, and waits
    /// until both schedulers answer.
    pub async fn start(root: &Path, logs: &Path, database: String, metadata: String) -> Self {
        let service = |name: String| Service {
            name,
            port: free_port(),
            process: None,
            incarnations: 0,
            frozen: false,
        };
        let mut deployment = Self {
            logs: logs.to_owned(),
            schedulers: (0..SCHEDULERS)
                .map(|i| service(format!("scheduler-{i}")))
                .collect(),
            importers: (0..IMPORTERS)
                .map(|i| service(format!("importer-{i}")))
                .collect(),
            redis: OwnRedis::start(free_port()),
            database,
            metadata,
            storage: format!("file://{}", root.display()),
        };
        for i in 0..IMPORTERS {
            deployment.start_importer(i);
        }
        for i in 0..SCHEDULERS {
            deployment.start_scheduler(i);
        }
        for i in 0..SCHEDULERS {
            crate::processes::connect_scheduler(&deployment.scheduler_url(i)).await;
        }
        deployment
    }

    /// The gRPC URL of scheduler `i`.
    pub fn scheduler_url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.schedulers[i].port)
    }

    fn scheduler_urls(&self) -> String {
        (0..SCHEDULERS)
            .map(|i| self.scheduler_url(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Starts importer `i` (again) on its port.
    pub fn start_importer(&mut self, i: usize) {
        let env = [
            (
                "FERRY_METADATA_DATABASE_URL",
                format!("{}?application_name=chaos-importer-{i}", self.metadata),
            ),
            ("FERRY_STORAGE_URL", self.storage.clone()),
            ("FERRY_SCHEDULER_URL", self.scheduler_urls()),
            ("FERRY_CANCEL_POLL_MS", "200".to_owned()),
            ("FERRY_SHUTDOWN_GRACE_SECS", "5".to_owned()),
        ];
        let service = &mut self.importers[i];
        start(service, "ferry-importer", &env, &self.logs);
    }

    /// Starts scheduler `i` (again) on its port.
    pub fn start_scheduler(&mut self, i: usize) {
        let importers = self
            .importers
            .iter()
            .map(|s| format!("http://127.0.0.1:{}", s.port))
            .collect::<Vec<_>>()
            .join(",");
        let env = [
            (
                "FERRY_DATABASE_URL",
                format!("{}?application_name=chaos-scheduler-{i}", self.database),
            ),
            (
                "FERRY_REDIS_URL",
                format!("redis://127.0.0.1:{}", self.redis.port),
            ),
            ("FERRY_STORAGE_URL", self.storage.clone()),
            ("FERRY_IMPORTERS", importers),
            ("FERRY_LEASE_TTL_SECS", LEASE_TTL.as_secs().to_string()),
            ("FERRY_ENQUEUE_INTERVAL_MS", "200".to_owned()),
            ("FERRY_GUARD_INTERVAL_SECS", "1".to_owned()),
        ];
        let service = &mut self.schedulers[i];
        start(service, "ferry-scheduler", &env, &self.logs);
    }

    /// A client of the first scheduler that answers (panics after 30 s).
    pub async fn client(&self) -> SchedulerClient<Connection> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            for i in 0..SCHEDULERS {
                if self.schedulers[i].process.is_none() || self.schedulers[i].frozen {
                    continue;
                }
                let options = ChannelOptions {
                    timeout: Some(Duration::from_secs(5)),
                    ..ChannelOptions::default()
                };
                if let Ok(channel) = Connector::default()
                    .connect(&self.scheduler_url(i), options)
                    .await
                {
                    return SchedulerClient::new(channel);
                }
            }
            assert!(Instant::now() < deadline, "no scheduler answers");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Settings for a schedule: quick guard, room for retries, the given capacity; switched on.
    pub async fn configure(&self, capacity: u32) {
        let mut client = self.client().await;
        let settings = UpdateSettingsRequest {
            max_step_duration_secs: Some(2),
            max_retries: Some(10),
            ..Default::default()
        };
        client.update_settings(settings).await.expect("settings");
        crate::run_inventory(&mut client).await;
        let enable = SetMigrationEnabledRequest {
            enabled: true,
            capacity: Some(capacity),
        };
        client.set_migration_enabled(enable).await.expect("enable");
    }

    /// Every log file written so far, by service name prefix (`scheduler`, `importer`).
    pub fn log_files(&self, prefix: &str) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.logs)
            .expect("logs")
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|path| {
                path.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(prefix))
            })
            .collect();
        files.sort();
        files
    }
}

fn start(service: &mut Service, binary: &str, env: &[(&str, String)], logs: &Path) {
    if let Some(old) = service.process.take() {
        if service.frozen {
            old.signal("CONT");
        }
        drop(old);
    }
    service.incarnations += 1;
    let name = format!("{}.{}", service.name, service.incarnations);
    service.process = Some(Process::start(binary, &name, service.port, env, logs));
    service.frozen = false;
}

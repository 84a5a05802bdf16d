//! The real binaries as processes, for tests that kill, stop and resume them.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use ferry_proto::scheduler::v1::GetMigrationSummaryRequest;
use ferry_proto::scheduler::v1::scheduler_client::SchedulerClient;
use ferry_shared::grpc::client::{ChannelOptions, Connection, Connector};

use crate::wait::wait_until;

/// A client of the scheduler at `url`, once it answers (panics after 30 s).
pub async fn connect_scheduler(url: &str) -> SchedulerClient<Connection> {
    wait_until(
        &format!("the scheduler at {url} to answer"),
        Duration::from_secs(30),
        async || {
            let mut client = Connector::default()
                .connect(url, ChannelOptions::default())
                .await
                .map(SchedulerClient::new)
                .map_err(|e| e.to_string())?;
            match client
                .get_migration_summary(GetMigrationSummaryRequest {})
                .await
            {
                Ok(_) => Ok(client),
                Err(status) => Err(status.to_string()),
            }
        },
    )
    .await
}

/// Where the workspace's binaries are: `FERRY_BIN_DIR`, else `<target>/debug` (honouring
/// `CARGO_TARGET_DIR`). `make test` builds them first.
pub fn bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("FERRY_BIN_DIR") {
        return PathBuf::from(dir);
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| crate::workspace_root().join("target"));
    target.join("debug")
}

/// Runs the real `ferryctl ARGS` against the scheduler at `url` (built by `make test`).
pub fn ferryctl(url: &str, args: &[&str]) -> std::process::Output {
    Command::new(bin_dir().join("ferryctl"))
        .args(args)
        .env("FERRY_SCHEDULER_URL", url)
        .output()
        .expect("ferryctl runs (make test builds it)")
}

/// A free port on 127.0.0.1 for a service to bind later, taken below the kernel's ephemeral
/// range: a port the kernel handed out (`bind` to port 0) may be given to an outgoing
/// connection before the service binds it, while one below the range is never given out.
/// Each call in a test process tries a port no earlier call tried.
pub fn free_port() -> u16 {
    const LOWEST: u32 = 10_000;
    static CALLS: AtomicU32 = AtomicU32::new(0);
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    let Some(span) = ephemeral_start
        .checked_sub(LOWEST)
        .filter(|span| *span >= 1_000)
    else {
        return std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
    };
    // Test processes run one after another; the process id spreads them over the span anyway.
    let base = std::process::id().wrapping_mul(7_919);
    loop {
        let call = CALLS.fetch_add(1, Ordering::Relaxed);
        assert!(call < span, "no free port left below {ephemeral_start}");
        let port = u16::try_from(LOWEST + base.wrapping_add(call) % span).expect("a port");
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A running process a test started (a Ferry binary, or a tool such as Prometheus); killed
/// when dropped.
#[derive(Debug)]
pub struct Process {
    child: Child,
    /// Its name, for messages.
    pub name: String,
    /// Where it serves (`http://127.0.0.1:PORT`; gRPC for Ferry binaries).
    pub url: String,
    /// Where its logs go.
    pub log: PathBuf,
}

impl Process {
    /// Starts `binary` with `env` (on top of a clean `FERRY_*` environment), serving on `port`
    /// (and `/metrics`, for the scheduler, on a free port: `env` may name one).
    pub fn start(
        binary: &str,
        name: &str,
        port: u16,
        env: &[(&str, String)],
        log_dir: &std::path::Path,
    ) -> Self {
        let path = bin_dir().join(binary);
        assert!(
            path.exists(),
            "{} is missing: run `make test` (it builds the binaries)",
            path.display()
        );
        let mut command = Command::new(&path);
        for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("FERRY_")) {
            command.env_remove(key);
        }
        command
            .env("FERRY_LISTEN_ADDR", format!("127.0.0.1:{port}"))
            .env("FERRY_METRICS_ADDR", format!("127.0.0.1:{}", free_port()))
            .env("FERRY_LOG_FORMAT", "json")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())));
        Self::spawn(command, name, format!("http://127.0.0.1:{port}"), log_dir)
    }

    /// Starts `command` (another program a test runs beside Ferry's, such as Prometheus) with
    /// its output in `<log_dir>/<name>.log`; `url` is where it serves.
    pub fn spawn(mut command: Command, name: &str, url: String, log_dir: &std::path::Path) -> Self {
        let log = log_dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).expect("log file");
        command
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log"))
            .stderr(file);
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name} ({command:?}): {e}"));
        Self {
            child,
            name: name.to_owned(),
            url,
            log,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal (`KILL`, `STOP`, `CONT`, `TERM`).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{signal} {}", self.pid());
    }

    /// Whether it still runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits for it to exit (panics after `timeout`).
    pub async fn wait_exit(&mut self, timeout: Duration) {
        let what = format!("{} to exit", self.name);
        wait_until(&what, timeout, async || {
            if self.is_running() {
                Err("running")
            } else {
                Ok(())
            }
        })
        .await;
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `BINARY import --path …` (one-shot mode) for `paths` on the GCS bucket `bucket` reached at
/// `emulator` (`host:port`), drawing from the shared storage budgets under `redis_prefix` at
/// `rate` reads and writes per second. The caller adds its output handling and other settings.
pub fn governed_one_shot(
    binary: &std::path::Path,
    paths: &[String],
    emulator: &str,
    bucket: &str,
    database: &str,
    redis_prefix: &str,
    rate: f64,
) -> Command {
    let mut command = Command::new(binary);
    command.arg("import");
    for path in paths {
        command.args(["--path", path]);
    }
    command
        .env("STORAGE_EMULATOR_HOST", emulator)
        .env("FERRY_STORAGE_URL", format!("gs://{bucket}"))
        .env("FERRY_METADATA_DATABASE_URL", database)
        .env("FERRY_REDIS_URL", crate::redis_url())
        .env("FERRY_REDIS_PREFIX", redis_prefix)
        .env("FERRY_STORAGE_READ_RATE", rate.to_string())
        .env("FERRY_STORAGE_WRITE_RATE", rate.to_string());
    command
}

//! The scheduler's configuration: flags with `FERRY_*` environment fallbacks.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;

use ferry_shared::config::ConfigCheck;
use ferry_shared::security::{SecurityArgs, SecurityConfig};
use ferry_shared::storage::governor::{BudgetSettings, GovernorArgs};

/// `ferry-scheduler`: owns each repository's migration state and drives the importers.
#[derive(Debug, Parser)]
#[command(name = "ferry-scheduler", version, about)]
pub struct SchedulerArgs {
    /// Address to serve gRPC on.
    #[arg(long, env = "FERRY_LISTEN_ADDR", default_value = "127.0.0.1:50051")]
    pub listen_addr: String,
    /// PostgreSQL URL of the scheduler database.
    #[arg(long, env = "FERRY_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Redis URL (lease and wake-ups).
    #[arg(long, env = "FERRY_REDIS_URL")]
    pub redis_url: Option<String>,
    /// Bucket holding `docker/registry/v2`, for the inventory: file:///abs/dir.
    #[arg(long, env = "FERRY_STORAGE_URL")]
    pub storage_url: Option<String>,
    /// Importers, comma-separated: `http://host:port` endpoints and `dns://name:port` names that
    /// stand for every address they resolve to (a Kubernetes headless Service).
    #[arg(long, env = "FERRY_IMPORTERS")]
    pub importers: Option<String>,
    /// Prefix of every Redis key this deployment uses.
    #[arg(long, env = "FERRY_REDIS_PREFIX", default_value = "ferry")]
    pub redis_prefix: String,
    /// Leading path segments that name a repository's project.
    #[arg(long, env = "FERRY_PROJECT_SEGMENTS", default_value = "2")]
    pub project_segments: String,
    /// Time to live of the enqueue lease, in seconds.
    #[arg(long, env = "FERRY_LEASE_TTL_SECS", default_value = "15")]
    pub lease_ttl_secs: String,
    /// Timer period of the enqueue loop, in milliseconds.
    #[arg(long, env = "FERRY_ENQUEUE_INTERVAL_MS", default_value = "2000")]
    pub enqueue_interval_ms: String,
    /// How often the lease holder's guard checks stale steps, in seconds.
    #[arg(long, env = "FERRY_GUARD_INTERVAL_SECS", default_value = "60")]
    pub guard_interval_secs: String,
    /// Seconds between batched background migration runs (plus up to 5 s of jitter); 0 turns
    /// the worker off on this replica.
    #[arg(long, env = "FERRY_BBM_INTERVAL_SECS", default_value = "60")]
    pub bbm_interval_secs: String,
    /// Attempts a background migration job gets before it fails its migration.
    #[arg(long, env = "FERRY_BBM_MAX_JOB_ATTEMPTS", default_value = "5")]
    pub bbm_max_job_attempts: String,
    /// Seconds between sweeps of the project repair scan (and between checks of its flag).
    #[arg(long, env = "FERRY_REPAIR_INTERVAL_SECS", default_value = "30")]
    pub repair_interval_secs: String,
    /// Address of the Prometheus `/metrics` endpoint; `off` serves none.
    #[arg(long, env = "FERRY_METRICS_ADDR", default_value = "127.0.0.1:9464")]
    pub metrics_addr: String,
    /// TLS, tokens and admission limits.
    #[command(flatten)]
    pub security: SecurityArgs,
    /// The shared storage request budgets (the inventory's listings draw from them).
    #[command(flatten)]
    pub governor: GovernorArgs,
    /// What to do (default: serve).
    #[command(subcommand)]
    pub command: Option<SchedulerCommand>,
}

/// `ferry-scheduler` subcommands.
#[derive(Debug, Clone, Copy, clap::Subcommand)]
pub enum SchedulerCommand {
    /// Serve gRPC and run the migration (the default).
    Serve,
    /// Migrate the scheduler database's schema and exit (the Helm chart's pre-upgrade Job).
    Migrate,
}

/// Validated scheduler configuration.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Address to serve on.
    pub listen_addr: SocketAddr,
    /// Scheduler database URL.
    pub database_url: String,
    /// Redis URL.
    pub redis_url: String,
    /// Storage URL.
    pub storage_url: String,
    /// Importer URLs.
    pub importers: Vec<String>,
    /// Redis key prefix.
    pub redis_prefix: String,
    /// Project depth.
    pub project_segments: usize,
    /// Lease TTL.
    pub lease_ttl: Duration,
    /// Enqueue timer period.
    pub enqueue_interval: Duration,
    /// Guard period.
    pub guard_interval: Duration,
    /// The background migration worker.
    pub bbm: crate::bbm::WorkerConfig,
    /// The project repair scan.
    pub repair: crate::repair::ScanConfig,
    /// Where `/metrics` is served, if anywhere.
    pub metrics_addr: Option<SocketAddr>,
    /// TLS, tokens and admission limits.
    pub security: SecurityConfig,
    /// The shared storage request budgets.
    pub budgets: BudgetSettings,
}

impl SchedulerArgs {
    /// Validates every value, naming every bad key.
    pub fn validate(&self) -> Result<SchedulerConfig, String> {
        let mut check = ConfigCheck::default();
        let listen_addr = check.socket_addr("FERRY_LISTEN_ADDR", &self.listen_addr);
        let database_url = check.url(
            "FERRY_DATABASE_URL",
            self.database_url.as_deref(),
            &["postgres", "postgresql"],
        );
        let redis_url = check.url(
            "FERRY_REDIS_URL",
            self.redis_url.as_deref(),
            &["redis", "rediss"],
        );
        let storage_url = check.url(
            "FERRY_STORAGE_URL",
            self.storage_url.as_deref(),
            &["file", "gs"],
        );
        let mut importers = Vec::new();
        match self
            .importers
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            None => check.problem(
                "FERRY_IMPORTERS",
                "is required (comma-separated importer URLs)",
            ),
            Some(list) => {
                for url in list.split(',').map(str::trim) {
                    importers.extend(check.url(
                        "FERRY_IMPORTERS",
                        Some(url),
                        &["http", "https", "dns"],
                    ));
                }
            }
        }
        if self.redis_prefix.is_empty() || self.redis_prefix.contains(char::is_whitespace) {
            check.problem("FERRY_REDIS_PREFIX", "must be non-empty without spaces");
        }
        let segments = check.positive("FERRY_PROJECT_SEGMENTS", &self.project_segments);
        let ttl = check.positive("FERRY_LEASE_TTL_SECS", &self.lease_ttl_secs);
        let interval = check.positive("FERRY_ENQUEUE_INTERVAL_MS", &self.enqueue_interval_ms);
        let guard = check.positive("FERRY_GUARD_INTERVAL_SECS", &self.guard_interval_secs);
        let bbm_interval = check.whole("FERRY_BBM_INTERVAL_SECS", &self.bbm_interval_secs);
        let bbm_attempts = check.positive("FERRY_BBM_MAX_JOB_ATTEMPTS", &self.bbm_max_job_attempts);
        let repair_interval =
            check.positive("FERRY_REPAIR_INTERVAL_SECS", &self.repair_interval_secs);
        let metrics_addr = check.socket_addr_or_off("FERRY_METRICS_ADDR", &self.metrics_addr);
        let security = self.security.validate(&mut check);
        let budgets = BudgetSettings {
            config: self.governor.validate(&mut check, redis_url.is_some()),
            redis_url: redis_url.clone(),
            redis_prefix: self.redis_prefix.clone(),
        };
        check.finish()?;
        let missing = || "validated above".to_owned();
        Ok(SchedulerConfig {
            listen_addr: listen_addr.ok_or_else(missing)?,
            database_url: database_url.ok_or_else(missing)?,
            redis_url: redis_url.ok_or_else(missing)?,
            storage_url: storage_url.ok_or_else(missing)?,
            importers,
            redis_prefix: self.redis_prefix.clone(),
            project_segments: usize::try_from(segments.ok_or_else(missing)?).unwrap_or(2),
            lease_ttl: Duration::from_secs(ttl.ok_or_else(missing)?),
            enqueue_interval: Duration::from_millis(interval.ok_or_else(missing)?),
            guard_interval: Duration::from_secs(guard.ok_or_else(missing)?),
            bbm: crate::bbm::WorkerConfig {
                interval: Duration::from_secs(bbm_interval.ok_or_else(missing)?),
                max_job_attempts: i32::try_from(bbm_attempts.ok_or_else(missing)?)
                    .unwrap_or(i32::MAX),
                max_run_time: crate::bbm::MAX_RUN_TIME,
            },
            repair: crate::repair::ScanConfig {
                idle: Duration::from_secs(repair_interval.ok_or_else(missing)?),
                ..crate::repair::ScanConfig::default()
            },
            metrics_addr,
            security,
            budgets,
        })
    }
}

impl SchedulerArgs {
    /// Validates what `ferry-scheduler migrate` needs: the database URL only.
    pub fn validate_migrate(&self) -> Result<String, String> {
        let mut check = ConfigCheck::default();
        let url = check.url(
            "FERRY_DATABASE_URL",
            self.database_url.as_deref(),
            &["postgres", "postgresql"],
        );
        check.finish()?;
        url.ok_or_else(|| "validated above".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_every_bad_key() {
        let args = SchedulerArgs::parse_from([
            "ferry-scheduler",
            "--redis-url",
            "http://x",
            "--importers",
            "http://127.0.0.1:1,nope",
            "--lease-ttl-secs",
            "0",
            "--storage-url",
            "file:///tmp",
        ]);
        let message = args.validate().unwrap_err();
        for key in [
            "FERRY_DATABASE_URL",
            "FERRY_REDIS_URL",
            "FERRY_IMPORTERS",
            "FERRY_LEASE_TTL_SECS",
        ] {
            assert!(message.contains(key), "{key} missing from {message}");
        }
        assert!(!message.contains("FERRY_STORAGE_URL"), "{message}");
    }
}

//! The importer's configuration: flags with `FERRY_*` environment fallbacks.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, Subcommand};

use ferry_shared::config::ConfigCheck;
use ferry_shared::security::{SecurityArgs, SecurityConfig};
use ferry_shared::storage::governor::{BudgetSettings, GovernorArgs};

use crate::service::StepLimits;

/// `ferry-importer`: registers repositories of the old storage layout in the metadata database.
#[derive(Debug, Parser)]
#[command(name = "ferry-importer", version, about)]
pub struct ImporterArgs {
    /// Address to serve gRPC on.
    #[arg(long, env = "FERRY_LISTEN_ADDR", default_value = "127.0.0.1:50061")]
    pub listen_addr: String,
    /// PostgreSQL URL of the metadata (registry) database.
    #[arg(long, env = "FERRY_METADATA_DATABASE_URL")]
    pub metadata_database_url: Option<String>,
    /// Bucket holding `docker/registry/v2`: file:///abs/dir.
    #[arg(long, env = "FERRY_STORAGE_URL")]
    pub storage_url: Option<String>,
    /// The scheduler replicas' gRPC URLs (comma-separated), for completion notifications.
    #[arg(long, env = "FERRY_SCHEDULER_URL")]
    pub scheduler_url: Option<String>,
    /// Imports run at once on this importer.
    #[arg(long, env = "FERRY_MAX_CONCURRENT_IMPORTS", default_value = "8")]
    pub max_concurrent_imports: String,
    /// Time limit of a pre-import, in seconds.
    #[arg(long, env = "FERRY_PRE_IMPORT_TIMEOUT_SECS", default_value = "7200")]
    pub pre_import_timeout_secs: String,
    /// Time limit of a final import, in seconds.
    #[arg(long, env = "FERRY_IMPORT_TIMEOUT_SECS", default_value = "600")]
    pub import_timeout_secs: String,
    /// Blob copies in flight per import.
    #[arg(long, env = "FERRY_COPY_CONCURRENCY", default_value = "32")]
    pub copy_concurrency: String,
    /// Tags (and their manifests) looked up at once per import.
    #[arg(long, env = "FERRY_TAG_CONCURRENCY", default_value = "10")]
    pub tag_concurrency: String,
    /// How often a running step checks for a cancellation made through another importer, in ms.
    #[arg(long, env = "FERRY_CANCEL_POLL_MS", default_value = "1000")]
    pub cancel_poll_ms: String,
    /// Connections to the metadata database, 3..=10000, shared by every step (a step waits for
    /// one); `auto`: 2 x FERRY_MAX_CONCURRENT_IMPORTS + 2, at most 32. Refused at start-up when
    /// PostgreSQL's max_connections could never grant them.
    #[arg(long, env = "FERRY_DB_MAX_CONNECTIONS", default_value = "auto")]
    pub db_max_connections: String,
    /// On SIGTERM, how long to wait for stopped steps to record their end and notify, in seconds.
    #[arg(long, env = "FERRY_SHUTDOWN_GRACE_SECS", default_value = "25")]
    pub shutdown_grace_secs: String,
    /// Address of the Prometheus `/metrics` endpoint; `off` serves none.
    #[arg(long, env = "FERRY_METRICS_ADDR", default_value = "127.0.0.1:9465")]
    pub metrics_addr: String,
    /// Address of the read-only OCI registry endpoint (pulls of every repository, old or
    /// migrated); `off` serves none.
    #[arg(long, env = "FERRY_REGISTRY_ADDR", default_value = "off")]
    pub registry_addr: String,
    /// TLS, tokens and admission limits.
    #[command(flatten)]
    pub security: SecurityArgs,
    /// Redis holding the shared storage request budgets (needed only when they are set).
    #[arg(long, env = "FERRY_REDIS_URL")]
    pub redis_url: Option<String>,
    /// Prefix of every Redis key this deployment uses (the scheduler's too).
    #[arg(long, env = "FERRY_REDIS_PREFIX", default_value = "ferry")]
    pub redis_prefix: String,
    /// The shared storage request budgets.
    #[command(flatten)]
    pub governor: GovernorArgs,
    /// What to do (default: serve).
    #[command(subcommand)]
    pub command: Option<ImporterCommand>,
}

/// Fewest metadata database connections: a step's transaction, and two for short statements.
pub const MIN_DB_CONNECTIONS: u32 = 3;
/// Most metadata database connections.
pub const MAX_DB_CONNECTIONS: u32 = 10_000;

/// The pool `auto` gives `steps` steps: two connections a step and two more, at most 32.
/// Steps hold a connection only while they write, so beyond that they take turns.
pub fn auto_db_connections(steps: u64) -> u32 {
    u32::try_from(steps.saturating_mul(2).saturating_add(2))
        .unwrap_or(u32::MAX)
        .min(32)
}

/// Validated importer configuration.
#[derive(Debug, Clone)]
pub struct ImporterConfig {
    /// Address to serve on.
    pub listen_addr: SocketAddr,
    /// Metadata database URL.
    pub metadata_database_url: String,
    /// Storage URL.
    pub storage_url: String,
    /// Scheduler URL.
    pub scheduler_url: String,
    /// Step limits.
    pub limits: StepLimits,
    /// Connections to the metadata database (`FERRY_DB_MAX_CONNECTIONS`).
    pub db_max_connections: u32,
    /// Shutdown grace period.
    pub shutdown_grace: Duration,
    /// Where `/metrics` is served, if anywhere.
    pub metrics_addr: Option<SocketAddr>,
    /// Where the registry endpoint is served, if anywhere.
    pub registry_addr: Option<SocketAddr>,
    /// TLS, tokens and admission limits.
    pub security: SecurityConfig,
    /// The shared storage request budgets.
    pub budgets: BudgetSettings,
}

/// What `ferry-importer` does.
#[derive(Debug, Clone, Subcommand)]
pub enum ImporterCommand {
    /// Serve gRPC for the scheduler (the default).
    Serve,
    /// Import repositories straight from storage into the metadata database, without a
    /// scheduler, with progress and a summary.
    Import(ImportCommand),
    /// Migrate the metadata database's schema and exit (the Helm chart's pre-upgrade Job).
    Migrate,
}

/// `ferry-importer import`.
#[derive(Debug, Clone, clap::Args)]
pub struct ImportCommand {
    /// Every repository in the bucket.
    #[arg(long, conflicts_with = "paths", required_unless_present = "paths")]
    pub all: bool,
    /// A repository to import (repeatable).
    #[arg(long = "path")]
    pub paths: Vec<String>,
    /// Read and check the source only: nothing is copied or written.
    #[arg(long)]
    pub dry_run: bool,
}

/// Validated one-shot configuration.
#[derive(Debug, Clone)]
pub struct OneShotConfig {
    /// Metadata database URL.
    pub metadata_database_url: String,
    /// Storage URL.
    pub storage_url: String,
    /// Step limits (`max_concurrent_imports` repositories run at once).
    pub limits: StepLimits,
    /// Connections to the metadata database (`FERRY_DB_MAX_CONNECTIONS`).
    pub db_max_connections: u32,
    /// The shared storage request budgets.
    pub budgets: BudgetSettings,
    /// What to import.
    pub selection: crate::oneshot::Selection,
    /// Check only.
    pub dry_run: bool,
}

/// Values both modes need, validated.
struct Common {
    metadata_database_url: Option<String>,
    storage_url: Option<String>,
    limits: Option<StepLimits>,
    db_max_connections: Option<u32>,
    shutdown_grace: Option<Duration>,
    budgets: BudgetSettings,
}

impl ImporterArgs {
    fn check_common(&self, check: &mut ConfigCheck) -> Common {
        let metadata_database_url = check.url(
            "FERRY_METADATA_DATABASE_URL",
            self.metadata_database_url.as_deref(),
            &["postgres", "postgresql"],
        );
        let storage_url = check.url(
            "FERRY_STORAGE_URL",
            self.storage_url.as_deref(),
            &["file", "gs"],
        );
        let max = check.positive("FERRY_MAX_CONCURRENT_IMPORTS", &self.max_concurrent_imports);
        let pre = check.positive(
            "FERRY_PRE_IMPORT_TIMEOUT_SECS",
            &self.pre_import_timeout_secs,
        );
        let fin = check.positive("FERRY_IMPORT_TIMEOUT_SECS", &self.import_timeout_secs);
        let copies = check.positive("FERRY_COPY_CONCURRENCY", &self.copy_concurrency);
        let tags = check.positive("FERRY_TAG_CONCURRENCY", &self.tag_concurrency);
        let poll = check.positive("FERRY_CANCEL_POLL_MS", &self.cancel_poll_ms);
        let grace = check.positive("FERRY_SHUTDOWN_GRACE_SECS", &self.shutdown_grace_secs);
        let db_max_connections = match self.db_max_connections.trim() {
            "auto" => max.map(auto_db_connections),
            value => match value.parse::<u32>() {
                Ok(n) if (MIN_DB_CONNECTIONS..=MAX_DB_CONNECTIONS).contains(&n) => Some(n),
                _ => {
                    check.problem(
                        "FERRY_DB_MAX_CONNECTIONS",
                        format!(
                            "must be `auto` or a number in {MIN_DB_CONNECTIONS}..={MAX_DB_CONNECTIONS}, \
                             got {value:?}"
                        ),
                    );
                    None
                }
            },
        };
        let redis_url = self
            .redis_url
            .as_deref()
            .filter(|url| !url.trim().is_empty())
            .and_then(|url| check.url("FERRY_REDIS_URL", Some(url), &["redis", "rediss"]));
        let budgets = BudgetSettings {
            config: self.governor.validate(check, redis_url.is_some()),
            redis_url,
            redis_prefix: self.redis_prefix.clone(),
        };
        let size = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        let limits = (|| {
            Some(StepLimits {
                max_concurrent_imports: size(max?),
                pre_import_timeout: Duration::from_secs(pre?),
                import_timeout: Duration::from_secs(fin?),
                copy_concurrency: size(copies?),
                tag_concurrency: size(tags?),
                cancel_poll: Duration::from_millis(poll?),
            })
        })();
        Common {
            metadata_database_url,
            storage_url,
            limits,
            db_max_connections,
            shutdown_grace: grace.map(Duration::from_secs),
            budgets,
        }
    }

    /// Validates every value the server needs, naming every bad key.
    pub fn validate(&self) -> Result<ImporterConfig, String> {
        let mut check = ConfigCheck::default();
        let listen_addr = check.socket_addr("FERRY_LISTEN_ADDR", &self.listen_addr);
        let scheduler_url = match self
            .scheduler_url
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            None => {
                check.problem(
                    "FERRY_SCHEDULER_URL",
                    "is required (comma-separated scheduler URLs)",
                );
                None
            }
            Some(list) => {
                let valid = list.split(',').map(str::trim).all(|url| {
                    check
                        .url("FERRY_SCHEDULER_URL", Some(url), &["http", "https"])
                        .is_some()
                });
                valid.then(|| list.to_owned())
            }
        };
        let common = self.check_common(&mut check);
        let metrics_addr = check.socket_addr_or_off("FERRY_METRICS_ADDR", &self.metrics_addr);
        let registry_addr = check.socket_addr_or_off("FERRY_REGISTRY_ADDR", &self.registry_addr);
        let security = self.security.validate(&mut check);
        check.finish()?;
        let missing = || "validated above".to_owned();
        Ok(ImporterConfig {
            metrics_addr,
            registry_addr,
            security,
            listen_addr: listen_addr.ok_or_else(missing)?,
            metadata_database_url: common.metadata_database_url.ok_or_else(missing)?,
            storage_url: common.storage_url.ok_or_else(missing)?,
            scheduler_url: scheduler_url.ok_or_else(missing)?,
            limits: common.limits.ok_or_else(missing)?,
            db_max_connections: common.db_max_connections.ok_or_else(missing)?,
            shutdown_grace: common.shutdown_grace.ok_or_else(missing)?,
            budgets: common.budgets,
        })
    }

    /// Validates what `ferry-importer migrate` needs: the metadata database URL only.
    pub fn validate_migrate(&self) -> Result<String, String> {
        let mut check = ConfigCheck::default();
        let url = check.url(
            "FERRY_METADATA_DATABASE_URL",
            self.metadata_database_url.as_deref(),
            &["postgres", "postgresql"],
        );
        check.finish()?;
        url.ok_or_else(|| "validated above".to_owned())
    }

    /// Validates what the one-shot import needs (no scheduler, no listening address).
    pub fn validate_import(&self, command: &ImportCommand) -> Result<OneShotConfig, String> {
        let mut check = ConfigCheck::default();
        let common = self.check_common(&mut check);
        for path in &command.paths {
            if let Err(error) = ferry_shared::ids::RepositoryPath::parse(path) {
                check.problem("--path", error);
            }
        }
        check.finish()?;
        let missing = || "validated above".to_owned();
        Ok(OneShotConfig {
            metadata_database_url: common.metadata_database_url.ok_or_else(missing)?,
            storage_url: common.storage_url.ok_or_else(missing)?,
            limits: common.limits.ok_or_else(missing)?,
            db_max_connections: common.db_max_connections.ok_or_else(missing)?,
            budgets: common.budgets,
            selection: if command.all {
                crate::oneshot::Selection::All
            } else {
                crate::oneshot::Selection::Paths(command.paths.clone())
            },
            dry_run: command.dry_run,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_every_bad_key() {
        let args = ImporterArgs::parse_from([
            "ferry-importer",
            "--listen-addr",
            "bogus",
            "--storage-url",
            "s3://x",
            "--max-concurrent-imports",
            "zero",
            "--scheduler-url",
            "http://127.0.0.1:1",
        ]);
        let message = args.validate().unwrap_err();
        for key in [
            "FERRY_LISTEN_ADDR",
            "FERRY_LISTEN_ADDR",
            "FERRY_METADATA_DATABASE_URL",
            "FERRY_STORAGE_URL",
            "FERRY_MAX_CONCURRENT_IMPORTS",
        ] {
            assert!(message.contains(key), "{key} missing from {message}");
        }
        assert!(!message.contains("FERRY_SCHEDULER_URL"), "{message}");
    }

    #[test]
    fn the_database_pool_is_bounded_and_its_setting_checked() {
        assert_eq!(auto_db_connections(4), 10);
        assert_eq!(auto_db_connections(100), 32);
        let with = |value: &str| {
            ImporterArgs::parse_from([
                "ferry-importer",
                "--metadata-database-url",
                "postgres://localhost/db",
                "--storage-url",
                "file:///tmp",
                "--scheduler-url",
                "http://127.0.0.1:1",
                "--max-concurrent-imports",
                "100",
                "--db-max-connections",
                value,
            ])
            .validate()
        };
        assert_eq!(with("auto").expect("valid").db_max_connections, 32);
        assert_eq!(with("200").expect("valid").db_max_connections, 200);
        for bad in ["2", "0", "10001", "many"] {
            let message = with(bad).unwrap_err();
            assert!(message.contains("FERRY_DB_MAX_CONNECTIONS"), "{message}");
        }
    }
}

//! The randomized fault suite: seeded, reproducible schedules of faults played against a real
//! migration (two scheduler replicas, three importers, real PostgreSQL, a Redis of its own, a
//! bucket holding registry-made and generated repositories), each followed by a check of the
//! invariants once the migration converged. See `docs/reliability.md`.
//!
//! `FERRY_CHAOS_SEED` is the first seed, `FERRY_CHAOS_SCHEDULES` how many (seeds follow one
//! another), `FERRY_CHAOS_WINDOW_SECS` how long faults are injected, `FERRY_CHAOS_REPOSITORIES`
//! how many generated repositories join the registry-made ones.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use sqlx::PgPool;

use crate::{LayoutWriter, RegistryServer, SampleRegistry, env_size, fresh_database};

pub mod deployment;
pub mod faults;
pub mod invariants;

pub use faults::Fault;

/// Repositories in process at once: low, so that the migration outlasts the faults.
const CAPACITY: u32 = 2;

/// How long a schedule's migration may take to converge once its faults stopped.
const CONVERGENCE: Duration = Duration::from_secs(300);

/// The bucket every schedule migrates: the registry-made sample and generated repositories,
/// served by the real registry as the source of truth.
#[derive(Debug)]
pub struct Source {
    sample: SampleRegistry,
    registry: RegistryServer,
    /// Every repository path in it.
    pub paths: Vec<String>,
}

impl Source {
    /// Builds the sample with docker-registry and skopeo, adds `generated` repositories of two
    /// tags each, and starts docker-registry over it.
    pub async fn build(generated: usize) -> Self {
        let sample = SampleRegistry::build(false);
        let root = sample.root();
        LayoutWriter::new(&root).registry("chaos", generated, 2);
        let mut paths: Vec<String> = sample
            .repositories()
            .iter()
            .filter_map(|r| r["path"].as_str().map(str::to_owned))
            .collect();
        paths.extend((0..generated).map(|i| format!("chaos/p{i:04}/app")));
        let registry = RegistryServer::start(&root).await;
        Self {
            sample,
            registry,
            paths,
        }
    }

    /// The real registry serving the source.
    pub fn registry(&self) -> &RegistryServer {
        &self.registry
    }

    /// The directory holding `docker/` (and, once migrated, `gitlab/`).
    pub fn root(&self) -> std::path::PathBuf {
        self.sample.root()
    }
}

/// The settings of a run of schedules, from the environment.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// The first seed.
    pub seed: u64,
    /// How many schedules.
    pub schedules: u64,
    /// How long faults are injected in each.
    pub window: Duration,
    /// Generated repositories (beside the registry-made ones).
    pub repositories: usize,
}

impl Plan {
    /// The plan the environment asks for, with `schedules` and `window_secs` as defaults.
    pub fn from_env(schedules: u64, window_secs: u64) -> Self {
        let seed = std::env::var("FERRY_CHAOS_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_secs())
            });
        Self {
            seed,
            schedules: env_size("FERRY_CHAOS_SCHEDULES", schedules),
            window: Duration::from_secs(env_size("FERRY_CHAOS_WINDOW_SECS", window_secs)),
            repositories: env_size("FERRY_CHAOS_REPOSITORIES", 150),
        }
    }
}

/// What one schedule did and found.
#[derive(Debug)]
pub struct Report {
    /// Its seed.
    pub seed: u64,
    /// The faults injected, by kind.
    pub faults: BTreeMap<Fault, u32>,
    /// Repositories ended done and skipped (by a cancel, or out of retries).
    pub done: i64,
    /// See `done`.
    pub skipped: i64,
    /// Repositories still with work ahead when the faults stopped (the faults' overlap with
    /// the migration: 0 means they hit an idle system).
    pub pending_after_faults: i64,
    /// From the end of the faults until every repository was terminal.
    pub convergence: Duration,
    /// Processes that exited by themselves during the faults (started again before the checks).
    pub exited: Vec<String>,
    /// Every invariant violated.
    pub violations: Vec<String>,
    /// From the first fault to the end of the checks.
    pub elapsed: Duration,
}

impl Report {
    /// One line for the run's summary.
    pub fn line(&self) -> String {
        let faults: u32 = self.faults.values().sum();
        format!(
            "seed {}: {faults} faults, {} pending when they stopped, converged {:.1} s later, \
             {} done, {} skipped, {} exited by themselves, {} violations, {:.0} s",
            self.seed,
            self.pending_after_faults,
            self.convergence.as_secs_f64(),
            self.done,
            self.skipped,
            self.exited.len(),
            self.violations.len(),
            self.elapsed.as_secs_f64()
        )
    }
}

/// Runs the schedule of `seed` against a fresh deployment over `source`: faults for `window`,
/// then convergence, then every invariant.
pub async fn run_schedule(source: &Source, seed: u64, window: Duration) -> Report {
    let started = Instant::now();
    let root = source.root();
    // Each schedule copies into an empty `gitlab/`.
    let _ = std::fs::remove_dir_all(root.join("gitlab"));
    let logs = tempfile::Builder::new()
        .prefix(&format!("ferry-chaos-{seed}-"))
        .tempdir()
        .expect("logs");
    let database = fresh_database("chaos").await;
    let metadata = fresh_database("chaos_meta").await;
    let mut deployment =
        deployment::Deployment::start(&root, logs.path(), database.clone(), metadata.clone()).await;
    deployment.configure(CAPACITY).await;
    let faults = faults::play(&mut deployment, seed, window, &source.paths).await;
    let exited = faults::restore(&mut deployment).await;
    // A service must ride out every fault here: none is fatal to a process.
    let mut early: Vec<String> = exited
        .iter()
        .map(|name| format!("{name} exited by itself during the faults"))
        .collect();

    let scheduler = PgPool::connect(&database)
        .await
        .expect("scheduler database");
    let meta = PgPool::connect(&metadata).await.expect("metadata database");
    let pending_after_faults: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM container_repositories WHERE migration_state = ANY($1)",
    )
    .bind(&ferry_scheduler::state::MigrationState::PENDING[..])
    .fetch_one(&scheduler)
    .await
    .expect("pending");
    let converging = Instant::now();
    let mut violations = invariants::wait_terminal(&scheduler, CONVERGENCE).await;
    violations.append(&mut early);
    let convergence = converging.elapsed();
    let complete = invariants::sides_agree(&scheduler, &meta, &mut violations).await;
    invariants::registered_as_source(&source.registry, &meta, &root, &complete, &mut violations)
        .await;
    invariants::logs_agree(
        &deployment.log_files("importer"),
        &deployment.log_files("scheduler"),
        &mut violations,
    );
    let count = |state: &'static str| {
        let scheduler = scheduler.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM container_repositories WHERE migration_state = $1",
            )
            .bind(state)
            .fetch_one(&scheduler)
            .await
            .expect("count")
        }
    };
    let (done, skipped) = (count("import_done").await, count("import_skipped").await);
    if !violations.is_empty() {
        // Keep the logs of a failing schedule for its replay.
        let kept = logs.keep();
        eprintln!("chaos seed {seed}: logs kept in {}", kept.display());
    }
    Report {
        seed,
        faults,
        done,
        skipped,
        pending_after_faults,
        convergence,
        exited,
        violations,
        elapsed: started.elapsed(),
    }
}

/// Prints the reports as a table: schedules, faults by kind, violations.
pub fn summarize(reports: &[Report]) -> String {
    let mut faults: BTreeMap<&str, u32> = BTreeMap::new();
    for report in reports {
        for (fault, n) in &report.faults {
            *faults.entry(fault.name()).or_default() += n;
        }
    }
    let violations: usize = reports.iter().map(|r| r.violations.len()).sum();
    let mut text = format!(
        "{} schedules, {} faults, {violations} violations\n",
        reports.len(),
        faults.values().sum::<u32>()
    );
    for (name, n) in faults {
        text.push_str(&format!("  {n:>5}  {name}\n"));
    }
    for report in reports {
        text.push_str(&format!("  {}\n", report.line()));
        for violation in &report.violations {
            text.push_str(&format!("      {violation}\n"));
        }
    }
    text
}

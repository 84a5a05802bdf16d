//! The scheduler's Prometheus metrics (all prefixed `ferry_`): batched background migrations
//! and the project repair scan.

use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

use ferry_shared::metrics::{Label, Registry};

use crate::store::bbm::BackgroundMigrationProgress;

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

fn job_duration_histogram() -> Histogram {
    // 10 ms to about 5.5 min (the run cap is 3 min).
    Histogram::new(exponential_buckets(0.01, 2.0, 16))
}

/// Metrics of the batched background migration worker.
#[derive(Debug, Clone)]
pub struct BbmMetrics {
    runs: Family<[Label; 1], Counter>,
    jobs: Family<[Label; 2], Counter>,
    job_duration: Histograms<[Label; 1]>,
    job_batch_size: Family<[Label; 1], Gauge>,
    progress: Family<[Label; 1], Gauge<f64, AtomicU64>>,
    migrations: Family<[Label; 1], Gauge>,
}

impl Default for BbmMetrics {
    fn default() -> Self {
        Self {
            runs: Family::default(),
            jobs: Family::default(),
            job_duration: Family::new_with_constructor(job_duration_histogram),
            job_batch_size: Family::default(),
            progress: Family::default(),
            migrations: Family::default(),
        }
    }
}

/// The migration statuses, each a `ferry_bbm_migrations` series (0 when none).
const STATUSES: [&str; 5] = ["active", "paused", "running", "finished", "failed"];

impl BbmMetrics {
    /// The metrics, registered in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "bbm_worker_runs",
            "Background migration worker runs by outcome (lock_in_use, idle, job_finished, ...)",
            metrics.runs.clone(),
        );
        registry.register(
            "bbm_jobs",
            "Background migration job attempts by migration and result (finished, failed)",
            metrics.jobs.clone(),
        );
        registry.register(
            "bbm_job_duration_seconds",
            "Time a background migration job's work took, by migration",
            metrics.job_duration.clone(),
        );
        registry.register(
            "bbm_job_batch_size",
            "Batch size of the migration's jobs",
            metrics.job_batch_size.clone(),
        );
        registry.register(
            "bbm_migration_progress_ratio",
            "Share of a migration's range cut into jobs, 0 to 1",
            metrics.progress.clone(),
        );
        registry.register(
            "bbm_migrations",
            "Background migrations by status",
            metrics.migrations.clone(),
        );
        metrics
    }

    /// Counts a run's outcome.
    pub fn run(&self, outcome: &'static str) {
        self.runs
            .get_or_create(&[("outcome", outcome.to_owned())])
            .inc();
    }

    /// Records a job attempt's end.
    pub fn job(&self, migration: &str, finished: bool, seconds: f64, batch_size: i32) {
        let result = if finished { "finished" } else { "failed" };
        self.jobs
            .get_or_create(&[
                ("migration", migration.to_owned()),
                ("result", result.to_owned()),
            ])
            .inc();
        let label = [("migration", migration.to_owned())];
        self.job_duration.get_or_create(&label).observe(seconds);
        self.job_batch_size
            .get_or_create(&label)
            .set(i64::from(batch_size));
    }

    /// Sets the per-migration and per-status gauges from the migrations' rows.
    pub fn migrations(&self, all: &[BackgroundMigrationProgress]) {
        for status in STATUSES {
            let count = all.iter().filter(|m| m.migration.status == status).count();
            self.migrations
                .get_or_create(&[("status", status.to_owned())])
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
        for m in all {
            let span = (m.migration.max_value - m.migration.min_value + 1) as f64;
            let covered = m
                .covered_to
                .map_or(0.0, |to| (to - m.migration.min_value + 1) as f64);
            self.progress
                .get_or_create(&[("migration", m.migration.name.clone())])
                .set((covered / span).clamp(0.0, 1.0));
        }
    }
}

/// Metrics of the project repair scan.
#[derive(Debug, Clone, Default)]
pub struct RepairMetrics {
    /// Projects analyzed (recorded or not yet).
    pub analyzed: Counter,
    /// Projects whose analysis failed.
    pub failed: Counter,
    /// Missing repositories found.
    pub missing_found: Counter,
    /// Listing calls that failed (and were retried).
    pub listing_errors: Counter,
    /// Full passes finished.
    pub passes: Counter,
    /// Workers running.
    pub workers: Gauge,
    /// Projects left in the sweep in progress (an estimate between counts).
    pub pending: Gauge,
    /// The scan's rate over the last report period.
    pub rate: Gauge<f64, AtomicU64>,
    /// Estimated seconds to finish the pending projects.
    pub eta_seconds: Gauge<f64, AtomicU64>,
}

impl RepairMetrics {
    /// The metrics, registered in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "repair_projects_analyzed",
            "Projects the repair scan analyzed",
            m.analyzed.clone(),
        );
        registry.register(
            "repair_projects_failed",
            "Projects whose repair analysis failed",
            m.failed.clone(),
        );
        registry.register(
            "repair_missing_repositories_found",
            "Repositories the registry has that the scheduler lacks, as found by the scan",
            m.missing_found.clone(),
        );
        registry.register(
            "repair_listing_errors",
            "ListSubRepositoriesBatch calls that failed",
            m.listing_errors.clone(),
        );
        registry.register(
            "repair_passes",
            "Full passes of the repair scan finished",
            m.passes.clone(),
        );
        registry.register(
            "repair_workers",
            "Repair scan workers running",
            m.workers.clone(),
        );
        registry.register(
            "repair_projects_pending",
            "Projects the repair scan has left",
            m.pending.clone(),
        );
        registry.register(
            "repair_projects_per_second",
            "The repair scan's rate",
            m.rate.clone(),
        );
        registry.register(
            "repair_eta_seconds",
            "Estimated time until the repair scan has no project left",
            m.eta_seconds.clone(),
        );
        m
    }
}

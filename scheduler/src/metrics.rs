//! The scheduler's Prometheus metrics (all prefixed `ferry_`): the migration, batched
//! background migrations and the project repair scan. Storage, database and gRPC metrics come
//! from `ferry_shared::metrics`.

use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

use ferry_shared::metrics::{Label, Registry};

use crate::bbm::RunOutcome;
use crate::guard::Verdict;
use crate::state::{MigrationState, VerifyResult};
use crate::store::bbm::BackgroundMigrationProgress;
use crate::store::{MigrationProgress, Settings};

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
        for outcome in RunOutcome::LABELS {
            metrics
                .runs
                .get_or_create(&[("outcome", outcome.to_owned())])
                .inc_by(0);
        }
        metrics.migrations(&[]);
        metrics
    }

    /// Creates the series of a migration this scheduler can run (named after its work
    /// function) at 0: its jobs by result and its progress, until a run reports them.
    pub fn known_migration(&self, migration: &str) {
        for result in ["finished", "failed"] {
            self.jobs
                .get_or_create(&[
                    ("migration", migration.to_owned()),
                    ("result", result.to_owned()),
                ])
                .inc_by(0);
        }
        drop(
            self.progress
                .get_or_create(&[("migration", migration.to_owned())]),
        );
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

/// The `type` label of a step: `pre` for a pre-import, `final` for a final import.
pub const STEP_TYPES: [&str; 2] = ["pre", "final"];

/// The step results importers report, by step type (`type` and `status` labels).
const RESULTS: [(&str, &str); 6] = [
    ("pre", "pre_import_complete"),
    ("pre", "pre_import_failed"),
    ("pre", "pre_import_canceled"),
    ("final", "import_complete"),
    ("final", "import_failed"),
    ("final", "import_canceled"),
];

/// Metrics of the migration itself: repositories per state, steps in flight and past their time
/// limit, results, the switch, the rate and the time left; the enqueue lease, triggers and
/// passes, and the guard's actions. Every known label value is a series from start-up.
#[derive(Debug, Clone, Default)]
pub struct MigrationMetrics {
    repositories: Family<[Label; 1], Gauge>,
    in_flight: Family<[Label; 1], Gauge>,
    past_time_limit: Family<[Label; 1], Gauge>,
    enabled: Gauge,
    pending: Gauge,
    done_per_minute: Gauge<f64, AtomicU64>,
    eta_seconds: Gauge<f64, AtomicU64>,
    results: Family<[Label; 2], Counter>,
    lease_held: Gauge,
    lease_acquisitions: Counter,
    lease_losses: Counter,
    /// Enqueue triggers this replica sent, collapsed ones included.
    pub triggers: Counter,
    /// Enqueue triggers collapsed into a pending one (the deduplication hits).
    pub deduplicated_triggers: Counter,
    guard_actions: Family<[Label; 1], Counter>,
    enqueue_passes: Counter,
    verifications: Family<[Label; 1], Counter>,
    verified: Family<[Label; 1], Gauge>,
}

impl MigrationMetrics {
    /// The metrics, registered in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "repositories",
            "Repositories by migration state",
            m.repositories.clone(),
        );
        registry.register(
            "imports_in_flight",
            "Repositories in a step, by type (pre: pre_importing, final: importing)",
            m.in_flight.clone(),
        );
        registry.register(
            "steps_past_time_limit",
            "Steps in flight longer than their time limit (the guard cancels them), by type",
            m.past_time_limit.clone(),
        );
        registry.register(
            "migration_enabled",
            "1 while the global switch is on (ferryctl migrate / resume), 0 while paused",
            m.enabled.clone(),
        );
        registry.register(
            "migration_pending_repositories",
            "Repositories with migration work ahead",
            m.pending.clone(),
        );
        registry.register(
            "migration_done_per_minute",
            "Repositories reaching import_done per minute, over the last 10 minutes",
            m.done_per_minute.clone(),
        );
        registry.register(
            "migration_eta_seconds",
            "Estimated time until no repository has work left, at the recent rate (0: unknown)",
            m.eta_seconds.clone(),
        );
        registry.register(
            "import_results",
            "Step results reported by importers, by type and status",
            m.results.clone(),
        );
        registry.register(
            "lease_held",
            "1 while this replica holds the enqueue lease",
            m.lease_held.clone(),
        );
        registry.register(
            "lease_acquisitions",
            "Times this replica took the enqueue lease",
            m.lease_acquisitions.clone(),
        );
        registry.register(
            "lease_losses",
            "Times this replica stopped leading (lease lost, expired or released)",
            m.lease_losses.clone(),
        );
        registry.register(
            "enqueue_triggers",
            "Enqueue triggers this replica sent to the lease holder, collapsed ones included",
            m.triggers.clone(),
        );
        registry.register(
            "enqueue_deduplicated_triggers",
            "Enqueue triggers collapsed into a pending one",
            m.deduplicated_triggers.clone(),
        );
        registry.register(
            "guard_actions",
            "What the guard did with stale steps, by action",
            m.guard_actions.clone(),
        );
        registry.register(
            "enqueue_passes",
            "Whole enqueue passes this replica finished while holding the lease",
            m.enqueue_passes.clone(),
        );
        registry.register(
            "verifications",
            "Repositories this replica verified against their source, by outcome",
            m.verifications.clone(),
        );
        registry.register(
            "repositories_verified",
            "import_done repositories by their last verification's outcome (never: not verified)",
            m.verified.clone(),
        );
        for result in VerifyResult::ALL {
            m.verifications
                .get_or_create(&[("outcome", result.as_str().to_owned())])
                .inc_by(0);
        }
        m.verification_counts(&[]);
        m.progress(&MigrationProgress {
            states: Vec::new(),
            total: 0,
            pending: 0,
            done_per_minute: 0.0,
            eta_seconds: 0.0,
        });
        m.steps_past_time_limit(0, 0);
        for (kind, status) in RESULTS {
            m.results
                .get_or_create(&[("type", kind.to_owned()), ("status", status.to_owned())])
                .inc_by(0);
        }
        for action in Verdict::LABELS {
            m.guard_actions
                .get_or_create(&[("action", action.to_owned())])
                .inc_by(0);
        }
        m
    }

    /// Sets the gauges read from the run-time settings (the global switch).
    pub fn settings(&self, settings: &Settings) {
        self.enabled.set(i64::from(settings.enabled));
    }

    /// Sets the counts of steps in flight past their time limit, by type.
    pub fn steps_past_time_limit(&self, pre: usize, final_imports: usize) {
        for (kind, count) in STEP_TYPES.into_iter().zip([pre, final_imports]) {
            self.past_time_limit
                .get_or_create(&[("type", kind.to_owned())])
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
    }

    /// A repository was verified.
    pub fn verified(&self, result: VerifyResult) {
        self.verifications
            .get_or_create(&[("outcome", result.as_str().to_owned())])
            .inc();
    }

    /// Sets `ferry_repositories_verified` from the counts of `import_done` repositories by
    /// their last outcome (`None`: never verified); an outcome not listed is 0.
    pub fn verification_counts(&self, counts: &[(Option<VerifyResult>, i64)]) {
        let labels = VerifyResult::ALL.map(Some).into_iter().chain([None]);
        for result in labels {
            let count = (counts.iter())
                .find(|(r, _)| *r == result)
                .map_or(0, |(_, n)| *n);
            let label = result.map_or("never", VerifyResult::as_str);
            self.verified
                .get_or_create(&[("outcome", label.to_owned())])
                .set(count);
        }
    }

    /// Sets the progress gauges.
    pub fn progress(&self, progress: &MigrationProgress) {
        // Every state a `ferry_repositories` series, 0 when none is in it.
        for state in MigrationState::ALL {
            let count = progress
                .states
                .iter()
                .find(|(s, _)| *s == state)
                .map_or(0, |(_, n)| *n);
            self.repositories
                .get_or_create(&[("state", state.as_str().to_owned())])
                .set(count);
            let kind = match state {
                MigrationState::PreImporting => "pre",
                MigrationState::Importing => "final",
                _ => continue,
            };
            self.in_flight
                .get_or_create(&[("type", kind.to_owned())])
                .set(count);
        }
        self.pending.set(progress.pending);
        self.done_per_minute.set(progress.done_per_minute);
        self.eta_seconds.set(progress.eta_seconds);
    }

    /// An importer reported a step's end.
    pub fn result(&self, import_type: &'static str, status: &'static str) {
        self.results
            .get_or_create(&[
                ("type", import_type.to_owned()),
                ("status", status.to_owned()),
            ])
            .inc();
    }

    /// This replica took the lease.
    pub fn lease_acquired(&self) {
        self.lease_held.set(1);
        self.lease_acquisitions.inc();
    }

    /// This replica stopped leading.
    pub fn lease_ended(&self) {
        self.lease_held.set(0);
        self.lease_losses.inc();
    }

    /// The guard acted on a stale step.
    pub fn guard_action(&self, action: &'static str) {
        self.guard_actions
            .get_or_create(&[("action", action.to_owned())])
            .inc();
    }

    /// A whole enqueue pass finished without error (it read the settings and, while the
    /// migration is enabled, started what it could).
    pub fn enqueue_pass(&self) {
        self.enqueue_passes.inc();
    }
}

//! The batched background migration worker (seed 001) against real PostgreSQL: keyset jobs in
//! `batch_size` steps, pause and resume mid-run, retries then `job_exceeds_max_attempt`,
//! validation codes, the one-worker lock, and a run cut off by its time cap.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::{PgConnection, PgPool};

use ferry_scheduler::bbm::{
    JobRange, RunOutcome, Work, WorkError, WorkRegistry, Worker, WorkerConfig, codes,
};
use ferry_scheduler::store::SchedulerStore;
use ferry_scheduler::store::bbm::NewBackgroundMigration;
use ferry_tests::fresh_database;

/// Rows of the test table: ids 1, 4, 7, ... (sparse, so ranges are by value, not by count).
const ROWS: i64 = 2500;

/// Marks the rows of its range visited; fails on ranges containing `poison` (when set) for
/// the first `failures` attempts (`u32::MAX`: always); sleeps `delay` first.
struct Visit {
    name: &'static str,
    poison: Option<i64>,
    failures: u32,
    failed: AtomicU32,
    delay: Duration,
}

impl Visit {
    fn new(name: &'static str) -> Self {
        Self {
            name,
            poison: None,
            failures: 0,
            failed: AtomicU32::new(0),
            delay: Duration::ZERO,
        }
    }
}

#[async_trait]
impl Work for Visit {
    fn name(&self) -> &'static str {
        self.name
    }

    async fn run(&self, tx: &mut PgConnection, range: &JobRange) -> Result<(), WorkError> {
        tokio::time::sleep(self.delay).await;
        sqlx::query(&format!(
            "UPDATE {} SET visits = visits + 1 WHERE {} BETWEEN $1 AND $2",
            range.table, range.column
        ))
        .bind(range.start)
        .bind(range.end)
        .execute(&mut *tx)
        .await?;
        if let Some(poison) = self.poison
            && (range.start..=range.end).contains(&poison)
            && self.failed.fetch_add(1, Ordering::SeqCst) < self.failures
        {
            return Err(WorkError::Failed(format!("row {poison} is poisoned")));
        }
        Ok(())
    }
}

struct Setup {
    store: SchedulerStore,
    db: PgPool,
}

async fn setup() -> Setup {
    let url = fresh_database("bbm").await;
    let store = SchedulerStore::connect(&url, 5).await.expect("connect");
    store.migrate().await.expect("migrate");
    let db = PgPool::connect(&url).await.expect("pool");
    sqlx::query("CREATE TABLE bbm_rows (id bigint PRIMARY KEY, visits integer NOT NULL DEFAULT 0)")
        .execute(&db)
        .await
        .expect("table");
    sqlx::query("INSERT INTO bbm_rows (id) SELECT 1 + 3 * i FROM generate_series(0, $1 - 1) i")
        .bind(ROWS)
        .execute(&db)
        .await
        .expect("rows");
    Setup { store, db }
}

impl Setup {
    async fn create(&self, name: &str, work: &str, table: &str, column: &str, batch: i32) {
        self.store
            .create_background_migration(&NewBackgroundMigration {
                name: name.to_owned(),
                job_signature_name: work.to_owned(),
                table_name: table.to_owned(),
                column_name: column.to_owned(),
                min_value: 1,
                max_value: 1 + 3 * (ROWS - 1),
                batch_size: batch,
            })
            .await
            .expect("create");
    }

    fn worker(&self, work: Vec<Arc<dyn Work>>, config: WorkerConfig) -> Worker {
        let mut registry = WorkRegistry::default();
        for w in work {
            registry.register(w).expect("unique");
        }
        Worker::new(self.store.clone(), registry, config)
    }

    /// (rows visited once, rows never visited, rows visited more than once)
    async fn visits(&self) -> (i64, i64, i64) {
        sqlx::query_as(
            "SELECT count(*) FILTER (WHERE visits = 1), count(*) FILTER (WHERE visits = 0), \
                 count(*) FILTER (WHERE visits > 1) FROM bbm_rows",
        )
        .fetch_one(&self.db)
        .await
        .expect("visits")
    }

    async fn status(&self, name: &str) -> (String, Option<String>) {
        let m = self
            .store
            .background_migrations(Some(name))
            .await
            .expect("list");
        let m = &m[0].migration;
        (m.status.clone(), m.failure_error_code.clone())
    }

    /// Runs until the migration ends; returns the outcomes.
    async fn run_to_end(&self, worker: &Worker) -> Vec<RunOutcome> {
        let mut outcomes = Vec::new();
        for _ in 0..100 {
            let outcome = worker.run_once().await.expect("run");
            let end = matches!(
                outcome,
                RunOutcome::MigrationFinished(_)
                    | RunOutcome::MigrationFailed { .. }
                    | RunOutcome::Idle
            );
            outcomes.push(outcome);
            if end {
                return outcomes;
            }
        }
        panic!("the migration did not end in 100 runs: {outcomes:?}");
    }
}

fn default_config() -> WorkerConfig {
    WorkerConfig {
        interval: Duration::from_millis(10),
        ..WorkerConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_cover_the_range_in_batches_and_a_pause_mid_run_holds_until_resumed() {
    let setup = setup().await;
    setup
        .create("visit_all", "visit", "bbm_rows", "id", 1000)
        .await;
    let worker = setup.worker(vec![Arc::new(Visit::new("visit"))], default_config());

    // Two jobs, then a pause: nothing runs, no job is created, until the resume.
    for _ in 0..2 {
        assert!(matches!(
            worker.run_once().await.expect("run"),
            RunOutcome::JobFinished { .. }
        ));
    }
    let paused = setup
        .store
        .pause_background_migrations(None)
        .await
        .expect("pause");
    assert_eq!(paused, vec!["visit_all".to_owned()]);
    assert_eq!(setup.status("visit_all").await.0, "paused");
    for _ in 0..3 {
        assert_eq!(worker.run_once().await.expect("run"), RunOutcome::Idle);
    }
    assert_eq!(
        setup.visits().await,
        (2000, ROWS - 2000, 0),
        "paused after 2 jobs"
    );
    let resumed = setup
        .store
        .resume_background_migrations(Some("visit_all"))
        .await
        .expect("resume");
    assert_eq!(resumed, vec!["visit_all".to_owned()]);
    assert_eq!(setup.status("visit_all").await.0, "active");

    let outcomes = setup.run_to_end(&worker).await;
    assert_eq!(
        outcomes.last(),
        Some(&RunOutcome::MigrationFinished("visit_all".into())),
        "{outcomes:?}"
    );
    assert_eq!(setup.visits().await, (ROWS, 0, 0), "every row exactly once");
    let progress = &setup
        .store
        .background_migrations(Some("visit_all"))
        .await
        .expect("list")[0];
    // 2500 rows in 1000-row jobs: 1000 + 1000 + 500 (the last ends at the range's end).
    assert_eq!(
        (progress.jobs, progress.jobs_finished, progress.jobs_failed),
        (3, 3, 0)
    );
    assert_eq!(progress.attempts, 3);
    assert_eq!(progress.covered_to, Some(1 + 3 * (ROWS - 1)));
    assert_eq!(setup.status("visit_all").await, ("finished".into(), None));
    // Finished: the worker has nothing to do.
    assert_eq!(worker.run_once().await.expect("run"), RunOutcome::Idle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_job_is_retried_after_the_new_ones_then_fails_its_migration() {
    let setup = setup().await;
    setup
        .create("poisoned", "poison", "bbm_rows", "id", 500)
        .await;
    let poison = Visit {
        poison: Some(1 + 3 * 700),
        failures: u32::MAX,
        ..Visit::new("poison")
    };
    let worker = setup.worker(vec![Arc::new(poison)], default_config());
    let outcomes = setup.run_to_end(&worker).await;
    // 5 new jobs (the 2nd fails), then 4 retries of the failed one, then the verdict.
    let failed: Vec<_> = outcomes
        .iter()
        .filter(|o| matches!(o, RunOutcome::JobFailed { .. }))
        .collect();
    assert_eq!(failed.len(), 5, "{outcomes:?}");
    assert!(
        matches!(outcomes[1], RunOutcome::JobFailed { start: 1499, .. }),
        "{outcomes:?}"
    );
    assert!(
        matches!(outcomes[2], RunOutcome::JobFinished { .. }),
        "new jobs come before retries: {outcomes:?}"
    );
    assert_eq!(
        outcomes.last(),
        Some(&RunOutcome::MigrationFailed {
            migration: "poisoned".into(),
            code: codes::JOB_EXCEEDS_MAX_ATTEMPT
        })
    );
    assert_eq!(
        setup.status("poisoned").await,
        ("failed".into(), Some("job_exceeds_max_attempt".into()))
    );
    let progress = &setup
        .store
        .background_migrations(Some("poisoned"))
        .await
        .expect("list")[0];
    assert_eq!(
        (progress.jobs, progress.jobs_finished, progress.jobs_failed),
        (5, 4, 1)
    );
    assert_eq!(progress.attempts, 4 + 5);
    assert_eq!(progress.last_error.as_deref(), Some("row 2101 is poisoned"));
    // The failed job's attempts rolled back their work: its rows are unvisited.
    assert_eq!(setup.visits().await, (ROWS - 500, 500, 0));

    // A job that fails twice, then passes: retried, and the migration finishes.
    let setup = self::setup().await;
    setup.create("flaky", "flaky", "bbm_rows", "id", 500).await;
    let flaky = Visit {
        poison: Some(1),
        failures: 2,
        ..Visit::new("flaky")
    };
    let worker = setup.worker(vec![Arc::new(flaky)], default_config());
    let outcomes = setup.run_to_end(&worker).await;
    assert_eq!(
        outcomes.last(),
        Some(&RunOutcome::MigrationFinished("flaky".into()))
    );
    assert_eq!(setup.visits().await, (ROWS, 0, 0), "{outcomes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_target_or_unknown_work_fails_with_its_code() {
    let setup = setup().await;
    setup
        .create("no_table", "visit", "no_such_table", "id", 100)
        .await;
    setup
        .create("no_column", "visit", "bbm_rows", "no_such_column", 100)
        .await;
    setup
        .create("no_work", "unregistered", "bbm_rows", "id", 100)
        .await;
    let worker = setup.worker(vec![Arc::new(Visit::new("visit"))], default_config());
    for (name, code) in [
        ("no_table", codes::INVALID_TABLE),
        ("no_column", codes::INVALID_COLUMN),
        ("no_work", codes::INVALID_JOB_SIGNATURE),
    ] {
        assert_eq!(
            worker.run_once().await.expect("run"),
            RunOutcome::MigrationFailed {
                migration: name.into(),
                code
            }
        );
        assert_eq!(
            setup.status(name).await,
            ("failed".into(), Some(code.into()))
        );
    }
    assert_eq!(setup.visits().await, (0, ROWS, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_worker_at_a_time_and_a_run_cut_off_by_its_cap_is_retried() {
    let setup = setup().await;
    setup.create("slow", "slow", "bbm_rows", "id", 1000).await;
    let slow = || -> Arc<dyn Work> {
        Arc::new(Visit {
            delay: Duration::from_millis(400),
            ..Visit::new("slow")
        })
    };
    let (a, b) = (
        setup.worker(vec![slow()], default_config()),
        setup.worker(vec![slow()], default_config()),
    );
    let (x, y) = tokio::join!(a.run_once(), b.run_once());
    let mut outcomes = [x.expect("a"), y.expect("b")];
    outcomes.sort_by_key(|o| matches!(o, RunOutcome::LockInUse));
    assert!(
        matches!(outcomes[0], RunOutcome::JobFinished { .. }),
        "{outcomes:?}"
    );
    assert_eq!(
        outcomes[1],
        RunOutcome::LockInUse,
        "the other replica waits"
    );

    // A run capped far below the work's time: cut off, the job stays running, the lock is freed.
    // The cap leaves a loaded machine ample time to take the lock and start the attempt.
    let much_slower: Arc<dyn Work> = Arc::new(Visit {
        delay: Duration::from_secs(10),
        ..Visit::new("slow")
    });
    let capped = setup.worker(
        vec![much_slower],
        WorkerConfig {
            max_run_time: Duration::from_secs(1),
            ..default_config()
        },
    );
    assert_eq!(capped.run_once().await.expect("run"), RunOutcome::TimedOut);
    assert_eq!(
        setup.visits().await,
        (1000, ROWS - 1000, 0),
        "the cut job's work rolled back"
    );
    // The next runs create the last job, then retry the cut one, recorded as timed out.
    let outcomes = setup.run_to_end(&a).await;
    assert_eq!(
        outcomes.last(),
        Some(&RunOutcome::MigrationFinished("slow".into())),
        "{outcomes:?}"
    );
    assert_eq!(setup.visits().await, (ROWS, 0, 0));
    let timed_out: (i32, Option<String>) = sqlx::query_as(
        "SELECT attempts, failure_error_code FROM batched_background_migration_jobs \
         WHERE min_value = 2999",
    )
    .fetch_one(&setup.db)
    .await
    .expect("job");
    assert_eq!(timed_out, (2, None), "one cut attempt, one that finished");
}

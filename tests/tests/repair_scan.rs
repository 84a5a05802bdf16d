//! The project repair scan (seed 002) and its part 2 on a real cluster: 100,000 projects and
//! 200,000 tagged repositories in real PostgreSQL, a known set missing on the scheduler side.
//! The scan finds exactly that set; the restore migration then creates exactly those
//! repositories, as already on the new platform.

use std::time::{Duration, Instant};

use sqlx::PgPool;
use tonic::Code;

use ferry_proto::scheduler::v1::scheduler_client::SchedulerClient;
use ferry_proto::scheduler::v1::{
    BackgroundMigrationSelector, DoubleCheckRequest, GetRepairStatusRequest, RepairStatus,
    RetryFailedRepairsRequest, StartRepairRestoreRequest, UpdateSettingsRequest,
};
use ferry_tests::Cluster;
use ferry_tests::repair_seed::{expectation, seed_registry, seed_scheduler, wrong_analyses};
use ferry_tests::wait::POLL_INTERVAL;
use ferry_tests::{poll_until, wait_until};

const PROJECTS: i64 = 100_000;

/// Waits (up to 5 s: gauges are refreshed right after the work they describe) until every line
/// is in the scheduler's `/metrics`.
async fn wait_for_metrics(cluster: &Cluster, lines: &[String]) {
    let all_in = poll_until(Duration::from_secs(5), POLL_INTERVAL, async || {
        let metrics = cluster.metrics().await;
        if lines.iter().all(|line| metrics.lines().any(|l| l == line)) {
            Ok(())
        } else {
            Err(metrics)
        }
    })
    .await;
    all_in.unwrap_or_else(|metrics| panic!("{lines:?} not all in\n{metrics}"));
}

/// Background migration worker runs that looked at the migrations (every outcome but
/// `lock_in_use`), from the scheduler's `/metrics` text.
fn worker_runs(metrics: &str) -> f64 {
    metrics
        .lines()
        .filter(|line| {
            line.starts_with("ferry_bbm_worker_runs_total{")
                && !line.contains("outcome=\"lock_in_use\"")
        })
        .filter_map(|line| line.split_whitespace().nth(1)?.parse::<f64>().ok())
        .sum()
}

/// Runs `ferryctl ARGS --json` against the cluster and parses its output.
fn ferryctl(cluster: &Cluster, args: &[&str]) -> serde_json::Value {
    let output = cluster.ferryctl(&[args, &["--json"]].concat());
    assert!(output.status.success(), "ferryctl {args:?}: {output:?}");
    serde_json::from_slice(&output.stdout).expect("JSON")
}

async fn status(
    client: &mut SchedulerClient<ferry_shared::grpc::client::Connection>,
) -> RepairStatus {
    client
        .get_repair_status(GetRepairStatusRequest {})
        .await
        .expect("status")
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scan_finds_exactly_the_missing_repositories_and_part_two_restores_them() {
    let bucket = tempfile::tempdir().expect("bucket");
    let cluster = Cluster::start(bucket.path(), 1).await;
    let scheduler_db = PgPool::connect(&cluster.database_url).await.expect("db");
    let metadata_db = PgPool::connect(&cluster.metadata_database_url)
        .await
        .expect("metadata db");
    seed_scheduler(&scheduler_db, PROJECTS).await;
    seed_registry(&metadata_db, PROJECTS).await;
    let expected = expectation(PROJECTS);
    let mut client = cluster.client().await;

    let before = status(&mut client).await;
    assert_eq!(
        (before.projects, before.pending, before.completed),
        (100_000, 100_000, 0)
    );
    assert!(!before.enabled, "the flag is off by default");
    assert_eq!(before.max_concurrency, 2);
    let early = client
        .start_repair_restore(StartRepairRestoreRequest::default())
        .await;
    assert_eq!(
        early.unwrap_err().code(),
        Code::FailedPrecondition,
        "nothing scanned yet"
    );

    let started = Instant::now();
    client
        .update_settings(UpdateSettingsRequest {
            repair_enabled: Some(true),
            ..UpdateSettingsRequest::default()
        })
        .await
        .expect("enable");
    // Asked gently: each status counts the scan's rows, and the scan's rate is measured.
    let done = poll_until(
        Duration::from_secs(300).saturating_sub(started.elapsed()),
        Duration::from_millis(200),
        async || {
            let s = status(&mut client).await;
            if s.passes.is_empty() { Err(s) } else { Ok(s) }
        },
    )
    .await
    .expect("no full pass");
    let seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "repair scan: {PROJECTS} projects in {seconds:.1} s ({:.0} projects/s, debug build)",
        PROJECTS as f64 / seconds
    );
    assert_eq!(
        (done.completed, done.pending, done.ongoing, done.failed),
        (100_000, 0, 0, 0)
    );
    assert_eq!(done.missing_repositories as i64, expected.missing);
    assert_eq!(
        done.projects_with_missing as i64,
        expected.projects_with_missing
    );
    let pass = &done.passes[0];
    assert_eq!(
        (pass.projects as i64, pass.missing as i64),
        (PROJECTS, expected.missing),
        "every project recorded exactly once in the pass"
    );
    assert!(!done.scanner.is_empty(), "the scanning replica reported");
    assert_eq!(wrong_analyses(&scheduler_db, PROJECTS).await, vec![]);
    wait_for_metrics(
        &cluster,
        &[
            "ferry_repair_projects_analyzed_total 100000".to_owned(),
            format!(
                "ferry_repair_missing_repositories_found_total {}",
                expected.missing
            ),
            "ferry_repair_passes_total 1".to_owned(),
            "ferry_repair_projects_pending 0".to_owned(),
            "ferry_repair_projects_failed_total 0".to_owned(),
        ],
    )
    .await;
    // The double-check now knows how far back it must look.
    let check = client
        .double_check(DoubleCheckRequest {
            since_hours: 1,
            dry_run: true,
        })
        .await
        .expect("double-check")
        .into_inner();
    assert_eq!(
        check.last_full_repair_pass_at, pass.started_at,
        "the pass's start is the safe bound"
    );
    let shown = ferryctl(&cluster, &["repair", "status"]);
    assert_eq!(shown["completed"], 100_000);
    assert_eq!(shown["missing_repositories"], expected.missing);
    assert_eq!(shown["passes"][0]["projects"], 100_000);
    assert_eq!(
        client
            .retry_failed_repairs(RetryFailedRepairsRequest {})
            .await
            .expect("retry")
            .into_inner()
            .projects,
        0
    );

    // Part 2: the restore migration creates exactly the missing repositories.
    let repositories_before: i64 =
        sqlx::query_scalar("SELECT count(*) FROM container_repositories")
            .fetch_one(&scheduler_db)
            .await
            .expect("count");
    let migration = client
        .start_repair_restore(StartRepairRestoreRequest {
            batch_size: 20_000,
            force: false,
        })
        .await
        .expect("restore")
        .into_inner();
    assert_eq!(migration.status, "active");
    let again = client
        .start_repair_restore(StartRepairRestoreRequest::default())
        .await;
    assert_eq!(again.unwrap_err().code(), Code::AlreadyExists);
    // Paused through the API: no job starts until it is resumed.
    let selector = BackgroundMigrationSelector {
        name: migration.name.clone(),
    };
    let paused = client
        .pause_background_migrations(selector.clone())
        .await
        .expect("pause")
        .into_inner();
    assert_eq!(paused.names, std::slice::from_ref(&migration.name));
    let jobs_at_pause = ferryctl(&cluster, &["bbm", "list"])[0]["jobs"].clone();
    // Two worker runs end after this point: the second began after the pause, so it saw the
    // migration paused.
    let runs_at_pause = worker_runs(&cluster.metrics().await);
    wait_until(
        "two background migration runs while paused",
        Duration::from_secs(30),
        async || {
            let runs = worker_runs(&cluster.metrics().await);
            if runs >= runs_at_pause + 2.0 {
                Ok(())
            } else {
                Err(runs)
            }
        },
    )
    .await;
    let while_paused = &ferryctl(&cluster, &["bbm", "list"])[0];
    assert_eq!(while_paused["status"], "paused");
    assert_eq!(
        while_paused["jobs"], jobs_at_pause,
        "no job started while paused"
    );
    let resumed = client
        .resume_background_migrations(selector)
        .await
        .expect("resume")
        .into_inner();
    assert_eq!(resumed.names, std::slice::from_ref(&migration.name));
    let ended = poll_until(
        Duration::from_secs(600).saturating_sub(started.elapsed()),
        Duration::from_millis(250),
        async || {
            let m = client
                .list_background_migrations(BackgroundMigrationSelector {
                    name: migration.name.clone(),
                })
                .await
                .expect("list")
                .into_inner()
                .migrations
                .remove(0);
            if m.status == "finished" || m.status == "failed" {
                Ok(m)
            } else {
                Err(m)
            }
        },
    )
    .await
    .expect("restore stuck");
    assert_eq!(ended.status, "finished", "{ended:?}");
    let listed = ferryctl(&cluster, &["bbm", "list"]);
    assert_eq!(listed[0]["name"], "restore_missing_repositories");
    assert_eq!(listed[0]["status"], "finished");
    assert_eq!(listed[0]["progress"], 1.0);
    wait_for_metrics(
        &cluster,
        &[
            format!(
                "ferry_bbm_jobs_total{{migration=\"restore_missing_repositories\",result=\"finished\"}} {}",
                ended.jobs_finished
            ),
            "ferry_bbm_migration_progress_ratio{migration=\"restore_missing_repositories\"} 1.0"
                .to_owned(),
            "ferry_bbm_migrations{status=\"finished\"} 1".to_owned(),
        ],
    )
    .await;
    assert_eq!(ended.jobs_failed, 0);
    let (total, native): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE migration_state = 'import_done' \
             AND migration_skipped_reason = 'native_import') FROM container_repositories",
    )
    .fetch_one(&scheduler_db)
    .await
    .expect("counts");
    assert_eq!(total - repositories_before, expected.missing);
    assert_eq!(
        native, expected.missing,
        "restored as already on the new platform"
    );
    let untagged: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM container_repositories WHERE path LIKE '%/untagged'",
    )
    .fetch_one(&scheduler_db)
    .await
    .expect("untagged");
    assert_eq!(untagged, 0, "untagged repositories are never restored");
    // Every registry repository is now known to the scheduler.
    let registry_paths: Vec<String> = sqlx::query_scalar(
        "SELECT r.path FROM repositories r WHERE EXISTS (SELECT 1 FROM tags t WHERE t.repository_id = r.id)",
    )
    .fetch_all(&metadata_db)
    .await
    .expect("registry");
    assert_eq!(registry_paths.len() as i64, expected.registry_repositories);
    let known: i64 =
        sqlx::query_scalar("SELECT count(*) FROM container_repositories WHERE path = ANY($1)")
            .bind(&registry_paths)
            .fetch_one(&scheduler_db)
            .await
            .expect("known");
    assert_eq!(known, expected.registry_repositories);
}

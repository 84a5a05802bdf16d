//! The repair scan killed and restarted mid-run, as real processes: 100,000 projects, 200,000
//! repositories. A `SIGKILL` loses at most the claims in hand (they stay `ongoing` until the
//! stale limit, then the scan takes them again); a `SIGTERM` records everything analyzed and
//! leaves no claim behind; in the end every project is recorded exactly once, with exactly the
//! missing count.

use std::collections::HashSet;
use std::time::Duration;

use sqlx::PgPool;

use ferry_proto::importer::v1::GetCapacityRequest;
use ferry_proto::importer::v1::importer_client::ImporterClient;
use ferry_proto::scheduler::v1::scheduler_client::SchedulerClient;
use ferry_proto::scheduler::v1::{GetRepairStatusRequest, RepairStatus, UpdateSettingsRequest};
use ferry_tests::processes::{Process, connect_scheduler, free_port};
use ferry_tests::repair_seed::{expectation, seed_registry, seed_scheduler, wrong_analyses};
use ferry_tests::{fresh_database, poll_until, redis_url, unique_suffix, wait_until};

const PROJECTS: i64 = 100_000;

type Client = SchedulerClient<ferry_shared::grpc::client::Connection>;

async fn status(client: &mut Client) -> RepairStatus {
    client
        .get_repair_status(GetRepairStatusRequest {})
        .await
        .expect("status")
        .into_inner()
}

/// Polls until `done` holds for the status, or panics after two minutes.
async fn wait_for(
    client: &mut Client,
    what: &str,
    done: impl Fn(&RepairStatus) -> bool,
) -> RepairStatus {
    // Every 50 ms: each status counts the scan's rows while the scan runs.
    let polled = poll_until(
        Duration::from_secs(120),
        Duration::from_millis(50),
        async || {
            let s = status(client).await;
            if done(&s) { Ok(s) } else { Err(s) }
        },
    )
    .await;
    polled.expect(what)
}

async fn ongoing(db: &PgPool) -> HashSet<i64> {
    sqlx::query_scalar(
        "SELECT project_id FROM container_registry_data_repair_details WHERE status = 'ongoing'",
    )
    .fetch_all(db)
    .await
    .expect("ongoing")
    .into_iter()
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_scan_resumes_without_losing_or_double_counting_a_project() {
    let logs = tempfile::tempdir().expect("logs");
    let bucket = tempfile::tempdir().expect("bucket");
    let database = fresh_database("repair").await;
    let metadata = fresh_database("repair_meta").await;
    let storage = format!("file://{}", bucket.path().display());
    let importer = Process::start(
        "ferry-importer",
        "importer",
        free_port(),
        &[
            ("FERRY_METADATA_DATABASE_URL", metadata.clone()),
            ("FERRY_STORAGE_URL", storage.clone()),
            ("FERRY_SCHEDULER_URL", "http://127.0.0.1:1".to_owned()),
        ],
        logs.path(),
    );
    let port = free_port();
    let env = [
        ("FERRY_DATABASE_URL", database.clone()),
        ("FERRY_REDIS_URL", redis_url()),
        ("FERRY_STORAGE_URL", storage),
        ("FERRY_IMPORTERS", importer.url.clone()),
        (
            "FERRY_REDIS_PREFIX",
            format!("ferry-repair-{}", unique_suffix()),
        ),
        ("FERRY_LEASE_TTL_SECS", "2".to_owned()),
        ("FERRY_REPAIR_INTERVAL_SECS", "1".to_owned()),
    ];
    let start = |name: &str| Process::start("ferry-scheduler", name, port, &env, logs.path());
    let mut scheduler = start("scheduler-1");
    let url = scheduler.url.clone();
    let mut client = connect_scheduler(&url).await;
    let db = PgPool::connect(&database).await.expect("db");
    let metadata_db = PgPool::connect(&metadata).await.expect("metadata db");
    // The importer serves once it has migrated its database.
    wait_until(
        "the importer to come up",
        Duration::from_secs(30),
        async || {
            let mut client = ImporterClient::connect(importer.url.clone())
                .await
                .map_err(|e| e.to_string())?;
            match client.get_capacity(GetCapacityRequest {}).await {
                Ok(_) => Ok(()),
                Err(status) => Err(status.to_string()),
            }
        },
    )
    .await;
    seed_scheduler(&db, PROJECTS).await;
    seed_registry(&metadata_db, PROJECTS).await;
    let expected = expectation(PROJECTS);
    client
        .update_settings(UpdateSettingsRequest {
            repair_enabled: Some(true),
            repair_stale_after_secs: Some(5),
            ..UpdateSettingsRequest::default()
        })
        .await
        .expect("enable");

    // SIGKILL mid-run: what was recorded stays; claims in hand stay ongoing. The importer the
    // scan asks is frozen first, so the scan stops right after the look instead of running on
    // while the kill is sent and takes effect.
    let at_kill = wait_for(&mut client, "scan under way", |s| s.completed >= 20_000).await;
    importer.signal("STOP");
    scheduler.signal("KILL");
    scheduler.wait_exit(Duration::from_secs(10)).await;
    importer.signal("CONT");
    let orphaned = ongoing(&db).await;
    let recorded_at_kill: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM container_registry_data_repair_details WHERE status = 'completed'",
    )
    .fetch_one(&db)
    .await
    .expect("completed");
    assert!(recorded_at_kill >= at_kill.completed as i64);
    assert!(
        orphaned.len() <= 2 * (5_000 + 1_000),
        "a crash loses at most two workers' stash and chunk: {}",
        orphaned.len()
    );

    // Restart; SIGTERM mid-run: everything analyzed is recorded, no new claim is left behind.
    scheduler = start("scheduler-2");
    let mut client = connect_scheduler(&url).await;
    wait_for(&mut client, "scan resumed", |s| {
        s.completed as i64 >= recorded_at_kill + 20_000
    })
    .await;
    // Stopped while calls to the frozen importer are in flight; they end once it thaws.
    importer.signal("STOP");
    scheduler.signal("TERM");
    importer.signal("CONT");
    scheduler.wait_exit(Duration::from_secs(20)).await;
    let left = ongoing(&db).await;
    eprintln!(
        "SIGKILL at {recorded_at_kill} recorded left {} claims ongoing; after SIGTERM {} remain",
        orphaned.len(),
        left.len()
    );
    assert!(
        left.is_subset(&orphaned),
        "a graceful stop leaves no claim of its own: {} new ongoing rows",
        left.difference(&orphaned).count()
    );

    // Restart: the rest, the orphaned claims once stale, and the pass.
    scheduler = start("scheduler-3");
    let mut client = connect_scheduler(&url).await;
    let done = wait_for(&mut client, "full pass", |s| !s.passes.is_empty()).await;
    assert_eq!(
        (done.completed, done.ongoing, done.pending, done.failed),
        (100_000, 0, 0, 0)
    );
    assert_eq!(done.missing_repositories as i64, expected.missing);
    let pass = &done.passes[0];
    assert_eq!(
        (pass.projects as i64, pass.missing as i64),
        (PROJECTS, expected.missing),
        "one pass across three processes, every project recorded exactly once"
    );
    assert_eq!(wrong_analyses(&db, PROJECTS).await, vec![]);
    assert!(
        scheduler
            .log_text()
            .contains("repair scan: full pass finished"),
        "the pass is logged"
    );
}

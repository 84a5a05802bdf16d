//! The guard heals what notifications cannot: lost completion notifications and steps whose
//! importer died. Real scheduler and importers over gRPC, real PostgreSQL and Redis, a registry
//! written by the real docker-registry.

use std::time::Duration;

use sqlx::PgPool;

use ferry_proto::scheduler::v1::{GetRepositoryRequest, SetMigrationEnabledRequest};
use ferry_scheduler::store::{SchedulerStore, SettingsPatch};
use ferry_tests::{Cluster, ClusterOptions, SampleRegistry, wait_until};

async fn inventory(cluster: &Cluster) -> u64 {
    cluster.inventory().await.repositories_found
}

async fn quick_guard(cluster: &Cluster) -> SchedulerStore {
    let store = SchedulerStore::connect(&cluster.database_url, 2)
        .await
        .expect("connect");
    let patch = SettingsPatch {
        max_step_duration: Some(Duration::from_secs(1)),
        ..SettingsPatch::default()
    };
    store.update_settings(&patch).await.expect("settings");
    store
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guard_finishes_every_repository_when_all_notifications_are_lost() {
    let sample = SampleRegistry::build(false);
    let options = ClusterOptions {
        notify: false,
        ..ClusterOptions::default()
    };
    let cluster = Cluster::start_with(format!("file://{}", sample.root().display()), options).await;
    quick_guard(&cluster).await;
    let repositories = inventory(&cluster).await;
    let summary = cluster.migrate(Duration::from_secs(120)).await;
    assert_eq!(
        ferry_tests::state_count(&summary, "import_done"),
        repositories,
        "{summary:?}"
    );
    // Every step was finished from the importer's status, not from a notification.
    let meta = PgPool::connect(&cluster.metadata_database_url)
        .await
        .expect("metadata");
    let complete: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM repositories WHERE migration_status = 'import_complete'",
    )
    .fetch_one(&meta)
    .await
    .expect("count");
    assert_eq!(complete as u64, repositories);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_whose_importer_died_is_unlocked_retried_elsewhere_and_completes() {
    const DEAD: &str = "http://127.0.0.1:1";
    let sample = SampleRegistry::build(false);
    let options = ClusterOptions {
        importers: 1,
        dead_importers: vec![DEAD.into()],
        ..ClusterOptions::default()
    };
    let cluster = Cluster::start_with(format!("file://{}", sample.root().display()), options).await;
    let store = quick_guard(&cluster).await;
    let repositories = inventory(&cluster).await;

    // A pre-import that an importer (now dead) claimed: pre_importing here, in progress on the
    // metadata side, and no process runs it.
    let orphan = store
        .claim_next_default(None)
        .await
        .expect("claim")
        .expect("a repository");
    store
        .record_importer(orphan.id, orphan.step, DEAD, None, None, None)
        .await
        .expect("record");
    let meta = PgPool::connect(&cluster.metadata_database_url)
        .await
        .expect("metadata");
    sqlx::query("INSERT INTO repositories (path, name, migration_status) VALUES ($1, 'x', 'pre_import_in_progress')")
        .bind(&orphan.path)
        .execute(&meta)
        .await
        .expect("claimed by the dead importer");

    let mut client = cluster.client().await;
    let summary = cluster.migrate(Duration::from_secs(120)).await;
    assert_eq!(
        ferry_tests::state_count(&summary, "import_done"),
        repositories,
        "{summary:?}"
    );
    let repo = client
        .get_repository(GetRepositoryRequest {
            path: orphan.path.clone(),
        })
        .await
        .expect("repository")
        .into_inner();
    assert_eq!(repo.migration_state.as_str(), "import_done");
    assert_eq!(
        repo.retries_count, 1,
        "aborted once by the guard, then retried"
    );
    let importer: Option<String> =
        sqlx::query_scalar("SELECT migration_importer FROM container_repositories WHERE path = $1")
            .bind(&orphan.path)
            .fetch_one(
                &PgPool::connect(&cluster.database_url)
                    .await
                    .expect("scheduler db"),
            )
            .await
            .expect("importer");
    assert_ne!(
        importer.as_deref(),
        Some(DEAD),
        "retried on the live importer"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_repository_whose_import_completed_is_finished_not_redone() {
    let sample = SampleRegistry::build(false);
    let cluster = Cluster::start(&sample.root(), 2).await;
    let repositories = inventory(&cluster).await;
    let mut client = cluster.client().await;
    let enable = SetMigrationEnabledRequest {
        enabled: true,
        capacity: Some(4),
    };
    client.set_migration_enabled(enable).await.expect("enable");
    cluster.wait_until_settled(Duration::from_secs(120)).await;

    // Its final import completed on the importer, but the scheduler aborted it (say the
    // notification was lost and a guard pass saw a failure in between).
    let path = "group-a/project-1/app";
    let scheduler_db = PgPool::connect(&cluster.database_url)
        .await
        .expect("scheduler db");
    sqlx::query(
        "UPDATE container_repositories SET migration_state = 'import_aborted', migration_retries_count = 1, \
             migration_aborted_at = now(), migration_aborted_in_state = 'importing', migration_import_done_at = NULL \
         WHERE path = $1",
    )
    .bind(path)
    .execute(&scheduler_db)
    .await
    .expect("abort by hand");
    let meta = PgPool::connect(&cluster.metadata_database_url)
        .await
        .expect("metadata");
    let updated_before: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT updated_at FROM repositories WHERE path = $1")
            .bind(path)
            .fetch_one(&meta)
            .await
            .expect("row");

    client
        .set_migration_enabled(enable)
        .await
        .expect("wake the loop");
    let summary = cluster.wait_until_settled(Duration::from_secs(60)).await;
    assert_eq!(
        ferry_tests::state_count(&summary, "import_done"),
        repositories,
        "{summary:?}"
    );
    let repo = client
        .get_repository(GetRepositoryRequest { path: path.into() })
        .await
        .expect("repo")
        .into_inner();
    assert_eq!(
        (repo.migration_state.as_str(), repo.retries_count),
        ("import_done", 1)
    );
    assert!(
        repo.skipped_reason.is_empty(),
        "imported, not native: {:?}",
        repo.skipped_reason
    );
    let updated_after: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT updated_at FROM repositories WHERE path = $1")
            .bind(path)
            .fetch_one(&meta)
            .await
            .expect("row");
    assert_eq!(
        updated_before, updated_after,
        "no step ran again on the importer"
    );

    // Aborted here, but the importer reports its pre-import as running: it is watched again
    // (pre_importing), not restarted (a start would be refused and abort it a second time).
    let running = "group-a/project-2/base";
    sqlx::query(
        "UPDATE repositories SET migration_status = 'pre_import_in_progress' WHERE path = $1",
    )
    .bind(running)
    .execute(&meta)
    .await
    .expect("running on the importer");
    sqlx::query(
        "UPDATE container_repositories SET migration_state = 'import_aborted', migration_retries_count = 1, \
             migration_aborted_at = now(), migration_aborted_in_state = 'pre_importing', \
             migration_pre_import_done_at = NULL, migration_import_done_at = NULL \
         WHERE path = $1",
    )
    .bind(running)
    .execute(&scheduler_db)
    .await
    .expect("abort by hand");
    client
        .set_migration_enabled(enable)
        .await
        .expect("wake the loop");
    let repo = wait_until(
        &format!("{running} to resume"),
        Duration::from_secs(30),
        async || {
            let repo = client
                .get_repository(GetRepositoryRequest {
                    path: running.into(),
                })
                .await
                .expect("repo")
                .into_inner();
            if repo.migration_state == "import_aborted" {
                Err(repo)
            } else {
                Ok(repo)
            }
        },
    )
    .await;
    assert_eq!(
        (repo.migration_state.as_str(), repo.retries_count),
        ("pre_importing", 1)
    );
}

//! The guard heals what notifications cannot: lost completion notifications and steps whose
//! importer died. Real scheduler and importers over gRPC, real PostgreSQL and Redis, a registry
//! written by the real docker-registry.

use std::time::Duration;

use sqlx::PgPool;

use ferry_proto::scheduler::v1::{
    GetRepositoryRequest, RunInventoryRequest, SetMigrationEnabledRequest,
};
use ferry_scheduler::store::SchedulerStore;
use ferry_tests::{Cluster, ClusterOptions, SampleRegistry};

async fn inventory(cluster: &Cluster) -> u64 {
    let mut client = cluster.client().await;
    let mut stream = client
        .run_inventory(RunInventoryRequest {})
        .await
        .expect("inventory")
        .into_inner();
    let mut found = 0;
    while let Some(progress) = stream.message().await.expect("progress") {
        found = progress.repositories_found;
    }
    found
}

async fn quick_guard(cluster: &Cluster) -> SchedulerStore {
    let store = SchedulerStore::connect(&cluster.database_url, 2)
        .await
        .expect("connect");
    let long = Duration::from_secs(600);
    store
        .set_step_limits(Duration::from_secs(1), long, long)
        .await
        .expect("settings");
    store
}

fn state_count(summary: &ferry_proto::scheduler::v1::MigrationSummary, state: &str) -> u64 {
    summary
        .states
        .iter()
        .filter(|s| s.state == state)
        .map(|s| s.count)
        .sum()
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
    let mut client = cluster.client().await;
    client
        .set_migration_enabled(SetMigrationEnabledRequest {
            enabled: true,
            capacity: Some(4),
        })
        .await
        .expect("enable");
    let summary = cluster.wait_until_settled(Duration::from_secs(120)).await;
    assert_eq!(
        state_count(&summary, "import_done"),
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
        .record_importer(orphan.id, DEAD, None)
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
    client
        .set_migration_enabled(SetMigrationEnabledRequest {
            enabled: true,
            capacity: Some(4),
        })
        .await
        .expect("enable");
    let summary = cluster.wait_until_settled(Duration::from_secs(120)).await;
    assert_eq!(
        state_count(&summary, "import_done"),
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
    assert_eq!(repo.migration_state, "import_done");
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

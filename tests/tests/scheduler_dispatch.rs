//! Dispatch on a real cluster: a step's end is answered by the lease holder at once (the final
//! import of a finished pre-import, the next claim for a freed slot) alongside the enqueue loop's
//! own passes, and the two together never take more slots than the capacity.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use sqlx::{PgPool, Row};

use ferry_proto::scheduler::v1::{GetRepositoryRequest, SetMigrationEnabledRequest};
use ferry_tests::{Cluster, ClusterOptions, LayoutWriter};

const REPOSITORIES: usize = 24;
const CAPACITY: u32 = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn step_ends_and_loop_passes_together_keep_to_the_capacity() {
    let dir = tempfile::tempdir().expect("tempdir");
    LayoutWriter::new(dir.path()).registry("dispatch", REPOSITORIES, 2);
    // Four importer slots against a capacity of three: only the scheduler can keep to it.
    let cluster = Cluster::start_with(
        format!("file://{}", dir.path().display()),
        ClusterOptions {
            importers: 2,
            importer_slots: 2,
            ..ClusterOptions::default()
        },
    )
    .await;
    let mut client = cluster.client().await;
    ferry_tests::run_inventory(&mut client).await;
    let db = PgPool::connect(&cluster.database_url)
        .await
        .expect("scheduler db");

    // Sample the slots in use for as long as the migration runs.
    let most = Arc::new(AtomicI64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn({
        let (db, most, done) = (db.clone(), Arc::clone(&most), Arc::clone(&done));
        async move {
            while !done.load(Ordering::SeqCst) {
                let busy: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM container_repositories \
                     WHERE migration_state IN ('pre_importing', 'pre_import_done', 'importing')",
                )
                .fetch_one(&db)
                .await
                .expect("sample");
                most.fetch_max(busy, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    });
    client
        .set_migration_enabled(SetMigrationEnabledRequest {
            enabled: true,
            capacity: Some(CAPACITY),
        })
        .await
        .expect("enable");
    let summary = cluster.wait_until_settled(Duration::from_secs(120)).await;
    done.store(true, Ordering::SeqCst);
    sampler.await.expect("sampler");

    assert_eq!(
        ferry_tests::state_count(&summary, "import_done"),
        REPOSITORIES as u64,
        "{summary:?}"
    );
    let most = most.load(Ordering::SeqCst);
    assert!(
        most <= i64::from(CAPACITY),
        "{most} slots in use at once, capacity {CAPACITY}"
    );
    assert!(most > 0, "the sampler saw the migration run");

    // Every final import was accepted by an importer after its pre-import ended, and the
    // repository says which one and when.
    let rows = sqlx::query(
        "SELECT path, migration_importer, \
                migration_step_accepted_at >= migration_import_started_at \
                AND migration_import_started_at >= migration_pre_import_done_at AS ordered \
         FROM container_repositories ORDER BY path",
    )
    .fetch_all(&db)
    .await
    .expect("rows");
    assert_eq!(rows.len(), REPOSITORIES);
    for row in &rows {
        let path: String = row.get("path");
        let importer: Option<String> = row.get("migration_importer");
        assert!(importer.is_some(), "{path}: no importer recorded");
        assert_eq!(
            row.get::<Option<bool>, _>("ordered"),
            Some(true),
            "{path}: pre-import done, final claimed, final accepted, in that order"
        );
    }
    let shown = client
        .get_repository(GetRepositoryRequest {
            path: "dispatch/p0000/app".into(),
        })
        .await
        .expect("get")
        .into_inner();
    assert!(shown.importer.starts_with("http"), "{shown:?}");
    assert!(!shown.step_accepted_at.is_empty(), "{shown:?}");
}

//! The scheduler's internal API on a real cluster: register, start now, cancel, list, preview,
//! writable, statistics.

use std::time::Duration;

use sqlx::PgPool;
use tonic::Code;

use ferry_proto::scheduler::v1::{
    CancelMigrationRequest, CheckWritableRequest, GetMigrationSummaryRequest, GetRepositoryRequest,
    ListRepositoriesRequest, PreviewQueueRequest, RegisterRepositoryRequest,
    SetMigrationEnabledRequest, StartMigrationNowRequest,
};
use ferry_tests::{Cluster, SampleRegistry};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_api_drives_single_repositories() {
    let sample = SampleRegistry::build(false);
    let cluster = Cluster::start(&sample.root(), 2).await;
    let mut client = cluster.client().await;
    ferry_tests::run_inventory(&mut client).await;

    // The queue, before anything runs.
    let preview = client
        .preview_queue(PreviewQueueRequest {})
        .await
        .expect("preview")
        .into_inner();
    assert_eq!(preview.ready, 8);
    assert_eq!(
        preview.next_ready.as_ref().map(|r| r.path.as_str()),
        Some("a/b/c/d/image")
    );
    assert!(preview.next_aborted.is_none());
    // Start now: to the front.
    let retag = "group-c/project-4/retag";
    client
        .start_migration_now(StartMigrationNowRequest { path: retag.into() })
        .await
        .expect("start now");
    let preview = client
        .preview_queue(PreviewQueueRequest {})
        .await
        .expect("preview")
        .into_inner();
    assert_eq!(preview.next_ready.map(|r| r.path), Some(retag.to_owned()));

    // Create events: one created on the new platform, one that only exists in the scheduler.
    let native = client
        .register_repository(RegisterRepositoryRequest {
            path: "newgroup/proj/fresh".into(),
            on_new_platform: true,
        })
        .await
        .expect("register")
        .into_inner();
    assert_eq!(
        (
            native.migration_state.as_str(),
            native.skipped_reason.as_str()
        ),
        ("import_done", "native_import")
    );
    let again = client
        .register_repository(RegisterRepositoryRequest {
            path: "newgroup/proj/fresh".into(),
            on_new_platform: false,
        })
        .await
        .expect("register again")
        .into_inner();
    assert_eq!(
        again.migration_state.as_str(),
        "import_done",
        "an existing repository is left alone"
    );
    let ghost = RegisterRepositoryRequest {
        path: "newgroup/proj/ghost".into(),
        on_new_platform: false,
    };
    assert_eq!(
        client
            .register_repository(ghost)
            .await
            .expect("register")
            .into_inner()
            .migration_state
            .as_str(),
        "default"
    );
    let bad = RegisterRepositoryRequest {
        path: "../etc".into(),
        on_new_platform: false,
    };
    assert_eq!(
        client.register_repository(bad).await.unwrap_err().code(),
        Code::InvalidArgument
    );

    // Paging through the default queue.
    let page = |after: &str| ListRepositoriesRequest {
        state: "default".into(),
        limit: 4,
        after: after.into(),
    };
    let first = client
        .list_repositories(page(""))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(first.repositories.len(), 4);
    let second = client
        .list_repositories(page(&first.next_after))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(second.repositories.len(), 4);
    let third = client
        .list_repositories(page(&second.next_after))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(
        (third.repositories.len(), third.next_after.as_str()),
        (1, ""),
        "9 default in all"
    );

    // Cancel one before it starts.
    let multi = "group-b/project-3/multi";
    let canceled = client
        .cancel_migration(CancelMigrationRequest {
            path: multi.into(),
            force: false,
        })
        .await
        .expect("cancel")
        .into_inner();
    assert_eq!(
        (
            canceled.migration_state.as_str(),
            canceled.skipped_reason.as_str()
        ),
        ("import_skipped", "migration_canceled")
    );

    client
        .set_migration_enabled(SetMigrationEnabledRequest {
            enabled: true,
            capacity: Some(1),
        })
        .await
        .expect("enable");
    let summary = cluster.wait_until_settled(Duration::from_secs(120)).await;
    assert!(
        summary.done_per_minute > 0.0 && summary.in_flight == 0,
        "{summary:?}"
    );
    let get = |path: &str| GetRepositoryRequest { path: path.into() };
    let ghost = client
        .get_repository(get("newgroup/proj/ghost"))
        .await
        .expect("repo")
        .into_inner();
    assert_eq!(
        (
            ghost.migration_state.as_str(),
            ghost.skipped_reason.as_str()
        ),
        ("import_done", "not_found")
    );
    // With capacity 1, the prioritized repository went first.
    let scheduler_db = PgPool::connect(&cluster.database_url).await.expect("db");
    let first_started: String = sqlx::query_scalar(
        "SELECT path FROM container_repositories WHERE migration_pre_import_started_at IS NOT NULL \
         ORDER BY migration_pre_import_started_at LIMIT 1",
    )
    .fetch_one(&scheduler_db)
    .await
    .expect("first");
    assert_eq!(first_started, retag);

    // Writable: yes when done; no while its final import runs.
    let writable = |path: &str| CheckWritableRequest { path: path.into() };
    assert!(
        client
            .check_writable(writable(retag))
            .await
            .expect("writable")
            .into_inner()
            .writable
    );
    sqlx::query("UPDATE container_repositories SET migration_state = 'importing' WHERE path = $1")
        .bind(retag)
        .execute(&scheduler_db)
        .await
        .expect("importing");
    let answer = client
        .check_writable(writable(retag))
        .await
        .expect("writable")
        .into_inner();
    assert!(
        !answer.writable && answer.reason.contains("being migrated"),
        "{answer:?}"
    );

    // Nothing to cancel once done; unknown repositories are NOT_FOUND.
    let done = CancelMigrationRequest {
        path: "a/b/c/d/image".into(),
        force: true,
    };
    assert_eq!(
        client.cancel_migration(done).await.unwrap_err().code(),
        Code::FailedPrecondition
    );
    let unknown = StartMigrationNowRequest {
        path: "no/such/repo".into(),
    };
    assert_eq!(
        client
            .start_migration_now(unknown)
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    let summary = client
        .get_migration_summary(GetMigrationSummaryRequest {})
        .await
        .expect("summary")
        .into_inner();
    assert_eq!(summary.total, 10, "8 from the inventory, 2 registered");
}

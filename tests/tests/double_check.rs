//! The double-check for dropped create events (seed 003) on a real cluster: repositories the
//! importers created in the window but the scheduler lacks are restored, exactly those.

use std::time::Duration;

use sqlx::PgPool;
use tonic::Code;

use ferry_proto::scheduler::v1::{DoubleCheckRequest, GetRepositoryRequest};
use ferry_tests::{Cluster, SampleRegistry};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_double_check_restores_exactly_the_repositories_created_in_the_window() {
    let sample = SampleRegistry::build(false);
    let cluster = Cluster::start(&sample.root(), 2).await;
    cluster.inventory().await;
    let mut client = cluster.client().await;
    cluster.migrate(Duration::from_secs(120)).await;

    // Create events the scheduler never got: three repositories in the window, one older.
    let scheduler_db = PgPool::connect(&cluster.database_url)
        .await
        .expect("scheduler db");
    let metadata_db = PgPool::connect(&cluster.metadata_database_url)
        .await
        .expect("metadata db");
    let dropped = [
        "a/b/c/d/image",
        "group-a/project-1/api",
        "group-b/project-3/multi",
    ];
    let older = "group-c/project-4/retag";
    sqlx::query("UPDATE repositories SET created_at = now() - interval '3 days' WHERE path = $1")
        .bind(older)
        .execute(&metadata_db)
        .await
        .expect("age");
    for path in dropped.iter().chain([&older]) {
        sqlx::query("DELETE FROM container_repositories WHERE path = $1")
            .bind(path)
            .execute(&scheduler_db)
            .await
            .expect("drop");
    }

    let dry = client
        .double_check(DoubleCheckRequest {
            since_hours: 24,
            dry_run: true,
        })
        .await
        .expect("dry run")
        .into_inner();
    assert_eq!(
        (dry.checked, dry.missing, dry.created),
        (7, 3, 0),
        "{dry:?}"
    );
    let mut missing = dry.missing_paths.clone();
    missing.sort();
    assert_eq!(missing, dropped);
    assert!(
        dry.last_full_repair_pass_at.is_empty(),
        "no repair pass has finished"
    );
    let absent = client
        .get_repository(GetRepositoryRequest {
            path: dropped[0].into(),
        })
        .await;
    assert_eq!(
        absent.unwrap_err().code(),
        Code::NotFound,
        "a dry run creates nothing"
    );

    let report = client
        .double_check(DoubleCheckRequest {
            since_hours: 24,
            dry_run: false,
        })
        .await
        .expect("double-check")
        .into_inner();
    assert_eq!((report.missing, report.created), (3, 3));
    for path in dropped {
        let repository = client
            .get_repository(GetRepositoryRequest { path: path.into() })
            .await
            .expect("restored")
            .into_inner();
        assert_eq!(
            (
                repository.migration_state.as_str(),
                repository.skipped_reason.as_str()
            ),
            ("import_done", "native_import")
        );
    }
    let older_one = client
        .get_repository(GetRepositoryRequest { path: older.into() })
        .await;
    assert_eq!(
        older_one.unwrap_err().code(),
        Code::NotFound,
        "created before the window: left alone"
    );
    // Run again: nothing left to restore. A wider window reaches the older one.
    let again = client
        .double_check(DoubleCheckRequest {
            since_hours: 24,
            dry_run: false,
        })
        .await
        .expect("again")
        .into_inner();
    assert_eq!((again.missing, again.created), (0, 0));
    let wider = client
        .double_check(DoubleCheckRequest {
            since_hours: 96,
            dry_run: false,
        })
        .await
        .expect("wider")
        .into_inner();
    assert_eq!(
        (wider.checked, wider.created, wider.missing_paths.clone()),
        (8, 1, vec![older.to_owned()])
    );
    let zero = client
        .double_check(DoubleCheckRequest {
            since_hours: 0,
            dry_run: true,
        })
        .await;
    assert_eq!(zero.unwrap_err().code(), Code::InvalidArgument);
}

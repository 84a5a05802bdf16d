//! `ferry-importer import`: the one-shot mode imports a registry written by the real
//! docker-registry straight into real PostgreSQL, without a scheduler; `--dry-run` writes nothing.

use std::time::Duration;

use sqlx::PgPool;

use ferry_importer::config::OneShotConfig;
use ferry_importer::oneshot::Selection;
use ferry_importer::service::StepLimits;
use ferry_tests::{SampleRegistry, fresh_database};

const BROKEN: &str = "group-d/project-6/broken";

fn config(
    url: &str,
    sample: &SampleRegistry,
    selection: Selection,
    dry_run: bool,
) -> OneShotConfig {
    OneShotConfig {
        metadata_database_url: url.to_owned(),
        storage_url: format!("file://{}", sample.root().display()),
        limits: StepLimits {
            max_concurrent_imports: 3,
            pre_import_timeout: Duration::from_secs(60),
            import_timeout: Duration::from_secs(60),
            copy_concurrency: 4,
            tag_concurrency: 4,
            cancel_poll: Duration::from_millis(500),
        },
        db_max_connections: ferry_importer::config::auto_db_connections(3),
        budgets: Default::default(),
        selection,
        dry_run,
    }
}

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(pool)
        .await
        .expect("count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_shot_imports_a_real_registry_and_a_dry_run_writes_nothing() {
    let sample = SampleRegistry::build(true);
    let repositories = sample.repositories().len() as u64;

    // Dry run: every repository is read and checked; the broken one is reported; nothing written.
    let url = fresh_database("oneshot_dry").await;
    let summary = ferry_importer::run_import(config(&url, &sample, Selection::All, true))
        .await
        .expect("dry run");
    assert_eq!(summary.ok, repositories - 1);
    assert_eq!(summary.failed_count, 1);
    assert_eq!(summary.failed[0].0, BROKEN);
    assert!(
        summary.failed[0].1.contains("is missing from storage"),
        "{:?}",
        summary.failed
    );
    let pool = PgPool::connect(&url).await.expect("pool");
    assert_eq!(count(&pool, "SELECT count(*) FROM repositories").await, 0);
    assert!(
        !sample.root().join("gitlab").exists(),
        "a dry run copies nothing"
    );

    // Real run of everything.
    let url = fresh_database("oneshot").await;
    let summary = ferry_importer::run_import(config(&url, &sample, Selection::All, false))
        .await
        .expect("import");
    assert_eq!(
        (summary.ok, summary.already, summary.failed_count),
        (repositories - 1, 0, 1)
    );
    assert!(
        summary.failed[0].1.starts_with("pre_import_failed:"),
        "{:?}",
        summary.failed
    );
    let pool = PgPool::connect(&url).await.expect("pool");
    let complete = count(
        &pool,
        "SELECT count(*) FROM repositories WHERE migration_status = 'import_complete'",
    )
    .await;
    assert_eq!(complete as u64, repositories - 1);
    let tags = count(&pool, "SELECT count(*) FROM tags").await;
    assert_eq!(tags as u64, summary.stats.tags);
    let expected_tags: usize = sample
        .repositories()
        .iter()
        .filter(|r| r["path"] != BROKEN)
        .map(|r| r["tags"].as_object().map_or(0, |t| t.len()))
        .sum();
    assert_eq!(tags as usize, expected_tags);
    assert!(summary.stats.blobs_copied > 0);

    // Again, by path: already on the new platform.
    let again = Selection::Paths(vec!["group-a/project-1/app".into(), "a/b/c/d/image".into()]);
    let summary = ferry_importer::run_import(config(&url, &sample, again, false))
        .await
        .expect("again");
    assert_eq!(
        (summary.ok, summary.already, summary.failed_count),
        (0, 2, 0)
    );
}

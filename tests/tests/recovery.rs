//! Recovery from a lost scheduler database (`docs/operations.md`, "Recovery"): the registry-made
//! sample is migrated partway (some repositories done, some pre-imported, some pending, some
//! skipped), the scheduler's database is dropped under it (and Redis loses its lease keys, the
//! fencing counter with them), and `ferryctl rebuild-state` on a fresh one brings back the same
//! repositories done, pre-imported and pending. The skips, which only the scheduler recorded,
//! come back on their next dispatch with the same reasons, and the migration then finishes with
//! every other repository done and matching its source.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use sqlx::PgPool;

use ferry_proto::scheduler::v1::{SetMigrationEnabledRequest, StringList, UpdateSettingsRequest};
use ferry_shared::storage::governor::GovernorArgs;
use ferry_tests::{Cluster, ClusterOptions, SampleRegistry, poll_until};

/// Fails its pre-import on every try (its manifest blob is deleted): skipped `too_many_retries`.
const BROKEN: &str = "group-d/project-6/broken";
/// Tagged `v1` and `latest`: over a tag limit of 1, skipped `too_many_tags`.
const TWO_TAGS: &str = "group-a/project-1/app";
/// The repositories the test pre-imports and stops before their final imports.
const PRE_IMPORTED: [&str; 2] = ["group-b/project-3/multi", "group-b/project-3/multi-docker"];

/// A repository's state and skip reason, as the scheduler database has them.
type States = BTreeMap<String, (String, Option<String>)>;

async fn states(db: &PgPool) -> States {
    let rows: Vec<(String, String, Option<String>)> = sqlx::query_as(
        "SELECT path, migration_state, migration_skipped_reason FROM container_repositories",
    )
    .fetch_all(db)
    .await
    .expect("states");
    rows.into_iter()
        .map(|(path, state, reason)| (path, (state, reason)))
        .collect()
}

async fn count_in(db: &PgPool, states: &[&str]) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM container_repositories WHERE migration_state = ANY($1)",
    )
    .bind(states)
    .fetch_one(db)
    .await
    .expect("count")
}

/// Waits until no repository is in `busy` states.
async fn wait_for_none_in(db: &PgPool, busy: &[&str], what: &str) {
    poll_until(
        Duration::from_secs(180),
        Duration::from_millis(100),
        async || match count_in(db, busy).await {
            0 => Ok(()),
            n => Err(n),
        },
    )
    .await
    .unwrap_or_else(|n| panic!("{what}: {n} repositories still in {busy:?}"));
}

async fn settings(cluster: &Cluster, request: UpdateSettingsRequest) {
    cluster
        .client()
        .await
        .update_settings(request)
        .await
        .expect("settings");
}

async fn switch(cluster: &Cluster, enabled: bool, capacity: u32) {
    cluster
        .client()
        .await
        .set_migration_enabled(SetMigrationEnabledRequest {
            enabled,
            capacity: Some(capacity),
        })
        .await
        .expect("switch");
}

fn denied(namespaces: &[&str]) -> Option<StringList> {
    Some(StringList {
        values: namespaces.iter().map(|n| (*n).to_owned()).collect(),
    })
}

/// `ferryctl ARGS` → (success, stdout, stderr).
fn ferryctl(cluster: &Cluster, args: &[&str]) -> (bool, String, String) {
    let output = cluster.ferryctl(args);
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn rebuild(cluster: &Cluster, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["rebuild-state", "--json"];
    all.extend_from_slice(args);
    let (ok, stdout, stderr) = ferryctl(cluster, &all);
    assert!(ok, "ferryctl {all:?}: {stderr}");
    assert!(stderr.contains("rebuild ("), "progress on stderr: {stderr}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// Runs a Redis command on the cluster's Redis.
async fn redis(args: &[&str]) {
    let client = redis::Client::open(ferry_tests::redis_url()).expect("redis url");
    let mut connection = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let mut command = redis::cmd(args[0]);
    for arg in &args[1..] {
        command.arg(*arg);
    }
    let _: redis::Value = command.query_async(&mut connection).await.expect("redis");
}

/// Waits until a replica holds the lease with a fencing token above `above`.
async fn wait_for_fence_above(cluster: &Cluster, above: u64) -> u64 {
    let lease = poll_until(
        Duration::from_secs(30),
        Duration::from_millis(100),
        async || {
            let lease = cluster
                .client()
                .await
                .get_lease(ferry_proto::scheduler::v1::GetLeaseRequest {})
                .await
                .expect("lease")
                .into_inner();
            if lease.held && lease.fence > above {
                Ok(lease.fence)
            } else {
                Err(lease)
            }
        },
    )
    .await;
    lease.unwrap_or_else(|lease| panic!("no lease above {above}: {lease:?}"))
}

/// Drops the scheduler's database (its connections closed by force) and creates it empty.
async fn drop_and_recreate(database_url: &str) {
    use sqlx::Connection;
    let (server, name) = database_url.rsplit_once('/').expect("database name");
    let mut admin = sqlx::PgConnection::connect(&format!("{server}/postgres"))
        .await
        .expect("postgres");
    for statement in [
        format!("DROP DATABASE \"{name}\" WITH (FORCE)"),
        format!("CREATE DATABASE \"{name}\""),
    ] {
        sqlx::query(&statement)
            .execute(&mut admin)
            .await
            .unwrap_or_else(|e| panic!("{statement}: {e}"));
    }
}

/// Tag directories of a repository in the old layout (what the tag limit counts).
fn tag_directories(root: &Path, path: &str) -> usize {
    let tags = root
        .join("docker/registry/v2/repositories")
        .join(path)
        .join("_manifests/tags");
    std::fs::read_dir(tags).map_or(0, |entries| entries.count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_scheduler_database_is_rebuilt_from_an_inventory_and_the_importers() {
    let sample = SampleRegistry::build(true);
    // Storage reads at a few per second: a pre-import takes seconds, so the switch is surely off
    // before the pre-imports it started end (they then stay pre_import_done).
    let options = ClusterOptions {
        budgets: GovernorArgs {
            storage_read_rate: "10".into(),
            storage_max_read_rate: "10".into(),
            ..GovernorArgs::default()
        },
        ..ClusterOptions::default()
    };
    let storage = format!("file://{}", sample.root().display());
    let mut cluster = Cluster::start_with(storage, options).await;
    let db = PgPool::connect(&cluster.database_url).await.expect("db");
    let inventory = cluster.inventory().await;
    let total = sample.repositories().len();
    // Many holders before this one: the importers record fencing tokens above 50 (Redis loses
    // its counter below with the database, and the rebuild must raise it).
    let fence_key = format!("{}:enqueuer:fence", cluster.redis_prefix);
    let lease_key = format!("{}:enqueuer:lease", cluster.redis_prefix);
    redis(&["SET", &fence_key, "50"]).await;
    redis(&["DEL", &lease_key]).await;
    wait_for_fence_above(&cluster, 50).await;
    assert_eq!(inventory.repositories_registered, total as u64);

    // 1. group-a and group-d: done, or skipped (too many tags, too many retries).
    let tag_limit = UpdateSettingsRequest {
        max_tags_count: Some(1),
        ..Default::default()
    };
    settings(&cluster, tag_limit.clone()).await;
    settings(
        &cluster,
        UpdateSettingsRequest {
            deny_root_namespaces: denied(&["group-b", "group-c", "a"]),
            ..Default::default()
        },
    )
    .await;
    switch(&cluster, true, 4).await;
    poll_until(
        Duration::from_secs(180),
        Duration::from_millis(100),
        async || match count_in(&db, &["import_done", "import_skipped"]).await {
            4 => Ok(()),
            n => Err(n),
        },
    )
    .await
    .unwrap_or_else(|n| panic!("group-a and group-d: {n} of 4 repositories ended"));

    // 2. group-b: pre-imported, its final imports not started (the switch goes off meanwhile).
    settings(
        &cluster,
        UpdateSettingsRequest {
            deny_root_namespaces: denied(&["group-c", "a"]),
            ..Default::default()
        },
    )
    .await;
    poll_until(
        Duration::from_secs(60),
        Duration::from_millis(10),
        async || match count_in(&db, &["pre_importing"]).await {
            2 => Ok(()),
            n => Err(n),
        },
    )
    .await
    .unwrap_or_else(|n| panic!("{n} pre-imports started, not 2"));
    switch(&cluster, false, 4).await;
    wait_for_none_in(&db, &["pre_importing", "importing"], "group-b").await;

    let before = states(&db).await;
    let state = |path: &str| before[path].0.as_str();
    assert_eq!(
        before[TWO_TAGS],
        ("import_skipped".into(), Some("too_many_tags".into()))
    );
    assert_eq!(
        before[BROKEN],
        ("import_skipped".into(), Some("too_many_retries".into()))
    );
    for path in PRE_IMPORTED {
        assert_eq!(state(path), "pre_import_done", "{before:?}");
    }
    for path in ["group-a/project-1/api", "group-a/project-2/base"] {
        assert_eq!(state(path), "import_done", "{before:?}");
    }
    for path in ["group-c/project-4/retag", "a/b/c/d/image"] {
        assert_eq!(state(path), "default", "{before:?}");
    }

    // 3. The scheduler database is lost: dropped under a stopped scheduler, created empty.
    db.close().await;
    cluster.stop_scheduler().await;
    drop_and_recreate(&cluster.database_url).await;
    redis(&["DEL", &fence_key, &lease_key]).await;
    cluster.start_scheduler().await;
    let db = PgPool::connect(&cluster.database_url).await.expect("db");
    assert_eq!(count_in(&db, &["default"]).await, 0, "an empty database");

    // 4. One command rebuilds it.
    let report = rebuild(&cluster, &[]);
    assert_eq!(report["repositories_found"], total, "{report}");
    assert_eq!(report["checked"], total, "{report}");
    assert_eq!(report["native_registered"], 0, "{report}");
    assert_eq!(report["retries_reset"], 1, "{report}");
    let notes = report["notes"].to_string();
    assert!(
        notes.contains("settings and namespace plans are not rebuilt"),
        "{notes}"
    );
    assert!(notes.contains("fencing tokens up to 5"), "{notes}");
    // The lease is taken again above every token the importers recorded.
    wait_for_fence_above(&cluster, 50).await;
    let after = states(&db).await;
    assert_eq!(after.len(), total);
    for (path, (was, reason)) in &before {
        let (now, now_reason) = &after[path];
        match path.as_str() {
            // Skips live only in the scheduler database: re-decided on the next dispatch.
            TWO_TAGS => assert_eq!((now.as_str(), now_reason), ("default", &None)),
            BROKEN => assert_eq!((now.as_str(), now_reason), ("import_aborted", &None)),
            _ => assert_eq!((now, now_reason), (was, reason), "{path}"),
        }
    }
    let broken: (i32, Option<String>, Option<String>) = sqlx::query_as(
        "SELECT migration_retries_count, migration_aborted_in_state, migration_last_error \
         FROM container_repositories WHERE path = $1",
    )
    .bind(BROKEN)
    .fetch_one(&db)
    .await
    .expect("broken");
    assert_eq!(broken.0, 0);
    assert_eq!(broken.1.as_deref(), Some("pre_importing"));
    assert!(
        broken
            .2
            .as_deref()
            .is_some_and(|e| e.starts_with("pre_import_failed: ")),
        "{broken:?}"
    );

    // Nothing changes twice.
    let again = rebuild(&cluster, &["--batch-size", "2"]);
    assert_eq!(
        (&again["checked"], &again["rebuilt"]),
        (&4.into(), &0.into()),
        "{again}"
    );
    assert_eq!(states(&db).await, after, "a second rebuild changes nothing");

    // 5. The saved settings back, every namespace allowed: the migration finishes. The skips
    // come back with their reasons; every other repository ends done and matches its source.
    settings(&cluster, tag_limit).await;
    let summary = cluster.migrate(Duration::from_secs(300)).await;
    assert_eq!(summary.total, total as u64);
    let end = states(&db).await;
    for (path, (state, reason)) in &end {
        let expected = if path == BROKEN {
            ("import_skipped", Some("too_many_retries"))
        } else if tag_directories(&sample.root(), path) > 1 {
            ("import_skipped", Some("too_many_tags"))
        } else {
            ("import_done", None)
        };
        assert_eq!((state.as_str(), reason.as_deref()), expected, "{path}");
    }
    assert_eq!(end[TWO_TAGS], before[TWO_TAGS]);
    assert_eq!(end[BROKEN], before[BROKEN]);
    let (ok, stdout, stderr) = ferryctl(&cluster, &["verify", "--all", "--json"]);
    assert!(ok, "verify: {stdout}\n{stderr}");
    let verified: serde_json::Value = serde_json::from_str(&stdout).expect("verify json");
    let done = end.values().filter(|(s, _)| s == "import_done").count();
    assert_eq!(verified["matched"], done, "{verified}");

    // A migration that is on is refused; with --yes it is turned off first. Nothing is left to
    // rebuild: every repository was claimed by a step.
    let (ok, _, stderr) = ferryctl(&cluster, &["rebuild-state"]);
    assert!(!ok && stderr.contains("the migration is on"), "{stderr}");
    let last = rebuild(&cluster, &["--yes"]);
    assert_eq!(
        (&last["checked"], &last["rebuilt"]),
        (&0.into(), &0.into()),
        "{last}"
    );
    assert!(
        last["notes"]
            .to_string()
            .contains("the rebuild turned it off"),
        "{last}"
    );
    assert_eq!(states(&db).await, end);
}

/// The rebuild's writes on their own: each recorded status becomes its state at the importer's
/// step, only where no step has claimed the repository, and a second write changes nothing. The
/// bulk lock keeps a rebuild apart from inventories and other rebuilds.
#[tokio::test]
async fn rebuilt_states_are_written_only_on_repositories_no_step_claimed() {
    use ferry_proto::common::v1::MigrationStatus::{self, *};
    use ferry_scheduler::importers::RecordedStatus;
    use ferry_scheduler::rebuild::RebuiltState;
    use ferry_scheduler::state::{MigrationState, SkipReason};
    use ferry_shared::step::Step;

    let step = |n: u64| Step::from_wire(n).expect("step");
    let hour_ago = chrono::Utc::now() - chrono::Duration::hours(1);
    /// Path, recorded status and step, expected state, expected step.
    type Case = (
        &'static str,
        Option<(MigrationStatus, u64)>,
        MigrationState,
        u64,
    );
    let cases: [Case; 9] = [
        // Sorts first: the step claimed before the rebuild writes.
        (
            "a/p/claimed",
            Some((ImportComplete, 9)),
            MigrationState::PreImporting,
            1,
        ),
        (
            "b/p/done",
            Some((ImportComplete, 5)),
            MigrationState::ImportDone,
            5,
        ),
        (
            "b/p/native",
            Some((Native, 0)),
            MigrationState::ImportDone,
            0,
        ),
        (
            "b/p/pre",
            Some((PreImportComplete, 3)),
            MigrationState::PreImportDone,
            3,
        ),
        (
            "b/p/pre-running",
            Some((PreImportInProgress, 4)),
            MigrationState::PreImporting,
            4,
        ),
        (
            "b/p/running",
            Some((ImportInProgress, 6)),
            MigrationState::Importing,
            6,
        ),
        (
            "b/p/pre-failed",
            Some((PreImportFailed, 2)),
            MigrationState::ImportAborted,
            2,
        ),
        (
            "b/p/canceled",
            Some((ImportCanceled, 7)),
            MigrationState::ImportAborted,
            7,
        ),
        ("b/p/untouched", None, MigrationState::Default, 0),
    ];
    let paths: Vec<&str> = cases.iter().map(|c| c.0).collect();
    let (store, _) = ferry_tests::registered_store("rebuild", &paths).await;
    let claimed = store.claim_next_default(None).await.expect("claim");
    assert_eq!(claimed.map(|c| c.path).as_deref(), Some("a/p/claimed"));

    let batch: Vec<RebuiltState> = cases
        .iter()
        .filter_map(|(path, recorded, _, _)| {
            let (status, number) = (*recorded)?;
            RebuiltState::from_recorded(RecordedStatus {
                path: (*path).to_owned(),
                status: Some(status),
                step: Step::from_wire(number).expect("step"),
                error: "recorded reason".into(),
                updated_at: Some(hour_ago),
                fence: 1,
            })
        })
        .collect();
    let written = store.write_rebuilt(&batch).await.expect("write");
    assert_eq!(written.states.len(), 7, "{written:?}");
    for (path, _, state, number) in &cases {
        let row = store.repository(path).await.expect("read").expect("row");
        assert_eq!(row.migration_state, *state, "{path}");
        assert_eq!(
            row.migration_step,
            Step::from_wire(*number).expect("step"),
            "{path}"
        );
        if *state == MigrationState::ImportAborted {
            assert_eq!(row.migration_retries_count, 0, "{path}");
            assert!(row.migration_aborted_at.is_some(), "{path}");
            assert!(
                row.migration_last_error
                    .as_deref()
                    .is_some_and(|e| e.contains("recorded reason")),
                "{path}: {row:?}"
            );
        }
    }
    let native = store
        .repository("b/p/native")
        .await
        .expect("read")
        .expect("row");
    assert_eq!(
        native.migration_skipped_reason,
        Some(SkipReason::NativeImport)
    );
    let canceled = store
        .repository("b/p/canceled")
        .await
        .expect("read")
        .expect("row");
    assert_eq!(
        canceled.migration_aborted_in_state,
        Some(MigrationState::Importing)
    );
    assert!(
        canceled.migration_pre_import_done_at.is_some(),
        "retried as a final import"
    );
    let failed = store
        .repository("b/p/pre-failed")
        .await
        .expect("read")
        .expect("row");
    assert_eq!(
        failed.migration_aborted_in_state,
        Some(MigrationState::PreImporting)
    );
    assert_eq!(failed.migration_pre_import_done_at, None);

    // The guard sees the rebuilt step in progress as old as the importer's record, at the
    // importer's own step number (so it asks about a step the importer knows).
    let stale = store
        .stale_steps(Duration::from_secs(60), 100)
        .await
        .expect("stale");
    let running = stale
        .iter()
        .find(|s| s.path == "b/p/pre-running")
        .expect("the rebuilt pre-import is stale");
    assert_eq!(running.migration_step, step(4));
    assert_eq!(running.migration_importer, None);

    // A second write changes nothing.
    let again = store.write_rebuilt(&batch).await.expect("write");
    assert!(again.states.is_empty(), "{again:?}");
    let unclaimed = store.unclaimed_paths("", 100).await.expect("unclaimed");
    assert_eq!(unclaimed, vec!["b/p/untouched".to_owned()]);

    // One rebuild at a time, and none while an inventory runs (inventories share).
    let rebuild = store.try_bulk_lock(true).await.expect("lock");
    assert!(rebuild.is_some());
    assert!(store.try_bulk_lock(true).await.expect("lock").is_none());
    assert!(store.try_bulk_lock(false).await.expect("lock").is_none());
    rebuild.expect("held").release().await;
    let inventory = store.try_bulk_lock(false).await.expect("lock");
    assert!(inventory.is_some());
    assert!(store.try_bulk_lock(false).await.expect("lock").is_some());
    assert!(store.try_bulk_lock(true).await.expect("lock").is_none());
}

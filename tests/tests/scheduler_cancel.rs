//! Cancel against completion, end to end: a scheduler whose importer pool calls real importer
//! gRPC servers over real PostgreSQL (both databases) and Redis. The importers' notifications go
//! nowhere, as if the replica they reach were frozen: what a cancel decides must hold on both
//! sides whatever arrives later.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;

use ferry_importer::notifier::Notifier;
use ferry_importer::service::{ImportService, Importer, StepLimits};
use ferry_importer::store::MetadataStore;
use ferry_proto::common::v1::{ImportStats, ImportType, MigrationStatus};
use ferry_proto::scheduler::v1::NotifyImportResultRequest;
use ferry_scheduler::error::SchedulerError;
use ferry_scheduler::importers::ImporterPool;
use ferry_scheduler::service::{Scheduler, SchedulerService};
use ferry_scheduler::state::{MigrationState, SkipReason};
use ferry_scheduler::store::SchedulerStore;
use ferry_shared::step::Step;
use ferry_shared::storage::BlobStore;
use ferry_tests::{GatedStore, LayoutWriter, fresh_database, serve_importer, wait_until};

const PATH: &str = "group/project/app";

struct Setup {
    /// The bucket (a directory).
    dir: tempfile::TempDir,
    /// The manifest `PATH:v1` points to.
    manifest: String,
    scheduler: Scheduler,
    store: SchedulerStore,
    /// The importer the scheduler's pool calls (over gRPC); steps are started on it directly.
    importer: Importer,
    metadata: PgPool,
    /// The gate the importer's storage reads wait on (open until a test closes it).
    gate: tokio::sync::watch::Sender<bool>,
    /// The scheduler database.
    database_url: String,
}

async fn setup() -> Setup {
    setup_with(false).await
}

/// [`setup`], with the importer's notifications reaching the scheduler (served over gRPC) when
/// `notify`, and reaching nobody (a frozen replica) otherwise.
async fn setup_with(notify: bool) -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let manifest = LayoutWriter::new(dir.path()).image(PATH, "v1", "cancel-vs-complete");
    let local: Arc<dyn BlobStore> =
        ferry_shared::storage::open(&format!("file://{}", dir.path().display())).expect("storage");
    let metadata_url = fresh_database("cancel_meta").await;
    let db = MetadataStore::connect(&metadata_url, 8)
        .await
        .expect("connect");
    db.migrate().await.expect("migrate");
    let (storage, gate) = GatedStore::new(Arc::clone(&local));
    gate.send(true).expect("open");
    let limits = StepLimits {
        max_concurrent_imports: 2,
        pre_import_timeout: Duration::from_secs(60),
        import_timeout: Duration::from_secs(60),
        copy_concurrency: 2,
        tag_concurrency: 2,
        cancel_poll: Duration::from_secs(60),
    };
    let scheduler_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let scheduler_url = if notify {
        format!(
            "http://127.0.0.1:{}",
            scheduler_listener.local_addr().expect("addr").port()
        )
    } else {
        "http://127.0.0.1:1".to_owned()
    };
    let notifier = Notifier::new(&scheduler_url, Duration::from_secs(10)).expect("notifier");
    let importer = Importer::new(Arc::new(storage), db, Some(notifier), limits);
    let port = serve_importer(importer.clone()).await;

    let pool = ImporterPool::new(&[format!("http://127.0.0.1:{port}")]).expect("pool");
    pool.refresh().await;
    let (scheduler, store, database_url) = ferry_tests::scheduler_with_url(&[PATH], pool).await;
    if notify {
        let routes = tonic::service::Routes::new(
            ferry_proto::scheduler::v1::scheduler_server::SchedulerServer::new(
                ferry_scheduler::grpc::SchedulerGrpc(scheduler.clone()),
            ),
        );
        tokio::spawn(ferry_shared::grpc::serve(
            scheduler_listener,
            routes,
            &[],
            ferry_shared::grpc::ServeOptions::default(),
            std::future::pending(),
        ));
    }
    Setup {
        dir,
        manifest,
        scheduler,
        store,
        importer,
        metadata: PgPool::connect(&metadata_url).await.expect("metadata"),
        gate,
        database_url,
    }
}

async fn metadata_status(setup: &Setup) -> String {
    sqlx::query_scalar("SELECT migration_status FROM repositories WHERE path = $1")
        .bind(PATH)
        .fetch_one(&setup.metadata)
        .await
        .expect("status")
}

async fn wait_for_metadata_status(setup: &Setup, wanted: &str) {
    let what = format!("status {wanted}");
    wait_until(&what, Duration::from_secs(30), async || {
        let now = metadata_status(setup).await;
        if now == wanted { Ok(()) } else { Err(now) }
    })
    .await;
}

async fn tags(setup: &Setup) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM tags")
        .fetch_one(&setup.metadata)
        .await
        .expect("tags")
}

/// Runs the repository's pre-import (step 1) to completion on both sides, then claims and
/// starts its final import (step 2) on the importer, held at its first storage read when
/// `held`. Returns the final import's step.
async fn final_import_started(setup: &Setup, held: bool) -> Step {
    let pre = setup
        .store
        .claim_next_default(None)
        .await
        .expect("claim")
        .expect("ready");
    let step = pre.step.wire();
    setup
        .importer
        .start_import(PATH, ImportType::Pre, 0, step)
        .await
        .expect("pre-import");
    wait_for_metadata_status(setup, "pre_import_complete").await;
    setup
        .store
        .finish_pre_import(PATH, pre.step, &ImportStats::default(), None)
        .await
        .expect("finish")
        .expect("applied");
    let last = setup
        .store
        .claim_pre_import_done(None, 1)
        .await
        .expect("claim")
        .pop()
        .expect("final claimed");
    if held {
        // The tag's link written again (same target, a new version): the final import reads it
        // again instead of taking its digest from the pre-import's record, and waits at the
        // gate there, before anything is committed.
        LayoutWriter::new(setup.dir.path()).tag_link(PATH, "v1", &setup.manifest);
    }
    setup.gate.send(!held).expect("gate");
    setup
        .importer
        .start_import(PATH, ImportType::Final, 0, last.step.wire())
        .await
        .expect("final import");
    last.step
}

fn late_notification(step: Step, status: MigrationStatus) -> NotifyImportResultRequest {
    NotifyImportResultRequest {
        path: PATH.into(),
        name: "app".into(),
        status: status.into(),
        detail: "late".into(),
        import_type: ImportType::Final.into(),
        stats: Some(ImportStats::default()),
        step: step.wire(),
        handed_back: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_cancel_just_after_the_final_import_committed_leaves_both_sides_done() {
    let s = setup().await;
    let step = final_import_started(&s, false).await;
    // The final import commits; its notification is stuck on a frozen replica.
    wait_for_metadata_status(&s, "import_complete").await;
    assert_eq!(
        s.store
            .repository(PATH)
            .await
            .expect("read")
            .expect("row")
            .migration_state
            .as_str(),
        "importing"
    );
    // The operator's forced cancel goes through the other replica: the completion won.
    let refused = s.scheduler.cancel_migration(PATH, true).await;
    assert!(
        matches!(&refused, Err(SchedulerError::FailedPrecondition(m)) if m.contains("completed before the cancel")),
        "{refused:?}"
    );
    let record = s.store.repository(PATH).await.expect("read").expect("row");
    assert_eq!(record.migration_state.as_str(), "import_done");
    assert_eq!(record.migration_skipped_reason, None);
    assert_eq!(record.migration_cancel_requested, None);
    assert_eq!(metadata_status(&s).await, "import_complete");
    assert_eq!(tags(&s).await, 1, "the committed tags stay");
    // The frozen replica wakes up and applies the completion: nothing changes.
    let late = s
        .scheduler
        .notify_import_result(late_notification(step, MigrationStatus::ImportComplete))
        .await
        .expect("notify");
    assert!(late.duplicate);
    assert_eq!(late.migration_state.as_str(), "import_done");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_cancel_before_the_commit_leaves_both_sides_canceled() {
    let s = setup().await;
    let step = final_import_started(&s, true).await;
    // The final import is the step in flight, held before its first storage read.
    assert_eq!(metadata_status(&s).await, "import_in_progress");
    let canceled = s
        .scheduler
        .cancel_migration(PATH, true)
        .await
        .expect("cancel");
    assert_eq!(canceled.migration_state.as_str(), "import_skipped");
    assert_eq!(canceled.skipped_reason, "migration_forced_canceled");
    assert_eq!(metadata_status(&s).await, "import_canceled");
    // The final import resumes and tries to commit: refused by its step; nothing registered.
    s.gate.send(true).expect("open");
    wait_until(
        "the step to end",
        Duration::from_secs(30),
        async || match s.importer.in_flight() {
            0 => Ok(()),
            steps => Err(format!("{steps} step(s) running")),
        },
    )
    .await;
    assert_eq!(metadata_status(&s).await, "import_canceled");
    assert_eq!(tags(&s).await, 0);
    // Its canceled end, delivered late, changes nothing either.
    let late = s
        .scheduler
        .notify_import_result(late_notification(step, MigrationStatus::ImportCanceled))
        .await
        .expect("notify");
    assert!(late.duplicate);
    let record = s.store.repository(PATH).await.expect("read").expect("row");
    assert_eq!(record.migration_state.as_str(), "import_skipped");
    assert_eq!(record.migration_retries_count, 0);
    // The runbook's "retry later": queued again from the start.
    let queued = s.scheduler.start_migration_now(PATH).await.expect("start");
    assert_eq!(queued.migration_state.as_str(), "default");
    assert_eq!(queued.skipped_reason, "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_in_flight_holds_back_the_retry_of_a_failed_step_until_it_is_done() {
    let s = setup().await;
    let step = final_import_started(&s, true).await;
    // A cancel recorded at the step (its importer call still on the way)...
    assert!(
        s.store
            .request_cancel(PATH, Some(step), SkipReason::MigrationCanceled)
            .await
            .expect("request")
    );
    // ...then the step fails: it is aborted, as any failure (only the importer's word ends a
    // repository for good), but not retried while the cancel is in flight.
    let ended = s
        .scheduler
        .notify_import_result(late_notification(step, MigrationStatus::ImportFailed))
        .await
        .expect("notify");
    assert_eq!(ended.migration_state.as_str(), "import_aborted");
    assert!(
        s.store.next_aborted().await.expect("next").is_none(),
        "no retry while the cancel is in flight"
    );
    // The cancel carries on and skips it at the step it named.
    assert!(
        s.store
            .cancel_migration(PATH, Some(step), SkipReason::MigrationCanceled)
            .await
            .expect("cancel")
    );
    let record = s.store.repository(PATH).await.expect("read").expect("row");
    assert_eq!(record.migration_state.as_str(), "import_skipped");
    assert_eq!(
        record.migration_skipped_reason.map(|r| r.as_str()),
        Some("migration_canceled")
    );
    assert_eq!(record.migration_cancel_requested, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_left_by_a_stopped_replica_holds_nothing_back_after_a_minute() {
    let s = setup().await;
    assert!(
        s.store
            .request_cancel(PATH, None, SkipReason::MigrationForcedCanceled)
            .await
            .expect("request")
    );
    assert!(
        s.store
            .claim_next_default(None)
            .await
            .expect("claim")
            .is_none(),
        "a cancel in flight holds the claim back"
    );
    // The replica that recorded it stopped before it finished: a minute later, it is stale.
    let db = sqlx::PgPool::connect(&s.database_url)
        .await
        .expect("database");
    sqlx::query(
        "UPDATE container_repositories \
         SET migration_cancel_requested_at = now() - interval '61 seconds'",
    )
    .execute(&db)
    .await
    .expect("age the request");
    assert!(
        s.store
            .claim_next_default(None)
            .await
            .expect("claim")
            .is_some(),
        "a stale cancel holds nothing back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollout_hands_its_steps_back_without_spending_a_retry() {
    let s = setup_with(true).await;
    let claimed = s
        .store
        .claim_next_default(None)
        .await
        .expect("claim")
        .expect("ready");
    // The pre-import is held at its first storage read when the importer is told to stop.
    s.gate.send(false).expect("close the gate");
    s.importer
        .start_import(PATH, ImportType::Pre, 0, claimed.step.wire())
        .await
        .expect("start");
    s.importer.begin_shutdown();
    assert!(
        s.importer.drain(Duration::from_secs(20)).await,
        "the step stopped"
    );
    // Its end reached the scheduler over gRPC as handed back: aborted, no retry counted.
    let record = wait_until("the handed-back end", Duration::from_secs(20), async || {
        let record = s.store.repository(PATH).await.expect("read").expect("row");
        if record.migration_state == MigrationState::PreImporting {
            Err(record.migration_state)
        } else {
            Ok(record)
        }
    })
    .await;
    assert_eq!(record.migration_state.as_str(), "import_aborted");
    assert_eq!(
        record.migration_retries_count, 0,
        "a rollout spends no retry"
    );
    assert!(
        record
            .migration_last_error
            .as_deref()
            .is_some_and(|e| e.starts_with("handed back by an importer shutting down")),
        "{:?}",
        record.migration_last_error
    );
    assert_eq!(metadata_status(&s).await, "pre_import_failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_while_the_final_import_waits_skips_without_starting_it() {
    let s = setup().await;
    let pre = s
        .store
        .claim_next_default(None)
        .await
        .expect("claim")
        .expect("ready");
    s.importer
        .start_import(PATH, ImportType::Pre, 0, pre.step.wire())
        .await
        .expect("pre-import");
    wait_for_metadata_status(&s, "pre_import_complete").await;
    s.store
        .finish_pre_import(PATH, pre.step, &ImportStats::default(), None)
        .await
        .expect("finish")
        .expect("applied");
    // Without force, the completed pre-import is left as it is on the metadata side (it holds no
    // tags); the scheduler skips the repository, and no final import is claimed for it.
    let canceled = s
        .scheduler
        .cancel_migration(PATH, false)
        .await
        .expect("cancel");
    assert_eq!(canceled.migration_state.as_str(), "import_skipped");
    assert_eq!(canceled.skipped_reason, "migration_canceled");
    assert!(
        s.store
            .claim_pre_import_done(None, 1)
            .await
            .expect("claim")
            .is_empty()
    );
    assert_eq!(metadata_status(&s).await, "pre_import_complete");
    assert_eq!(tags(&s).await, 0);
}

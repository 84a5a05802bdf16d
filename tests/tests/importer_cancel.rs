//! Cancellation, step identities and the retry race of seed 004, against real PostgreSQL: a
//! canceled step stops at once in its own process and within a poll interval elsewhere; a step
//! that was canceled or taken over can never commit, even into the same status; a completed final
//! import is never canceled; and a pre-import that finishes after the final import can never
//! overwrite `import_complete`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::PgPool;

use ferry_importer::error::ApiError;
use ferry_importer::notifier::Notifier;
use ferry_importer::service::{ImportService, Importer, StepLimits};
use ferry_importer::store::MetadataStore;
use ferry_proto::common::v1::{ImportType, MigrationStatus};
use ferry_proto::importer::v1::StartOutcome;
use ferry_shared::error::ErrorCode;
use ferry_shared::storage::BlobStore;
use ferry_tests::{GatedStore, LayoutWriter, fresh_database, wait_until};

const PATH: &str = "group/project/app";

struct Setup {
    _dir: tempfile::TempDir,
    local: Arc<dyn BlobStore>,
    db: MetadataStore,
    pool: PgPool,
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    LayoutWriter::new(dir.path()).image(PATH, "v1", "seed-004");
    let local =
        ferry_shared::storage::open(&format!("file://{}", dir.path().display())).expect("storage");
    let url = fresh_database("cancel").await;
    let db = MetadataStore::connect(&url, 8).await.expect("connect");
    db.migrate().await.expect("migrate");
    let pool = PgPool::connect(&url).await.expect("pool");
    Setup {
        _dir: dir,
        local,
        db,
        pool,
    }
}

/// One import slot, one-minute step limits, the given cancellation poll.
fn limits(poll: Duration) -> StepLimits {
    StepLimits {
        max_concurrent_imports: 1,
        pre_import_timeout: Duration::from_secs(60),
        import_timeout: Duration::from_secs(60),
        copy_concurrency: 2,
        tag_concurrency: 4,
        cancel_poll: poll,
    }
}

fn importer_with(setup: &Setup, storage: Arc<dyn BlobStore>, limits: StepLimits) -> Importer {
    // Nobody listens on port 1: notifications give up at once; the database is what we check.
    let notifier = Notifier::new("http://127.0.0.1:1", Duration::ZERO).expect("notifier");
    Importer::new(storage, setup.db.clone(), Some(notifier), limits)
}

fn importer(setup: &Setup, storage: Arc<dyn BlobStore>, poll: Duration) -> Importer {
    importer_with(setup, storage, limits(poll))
}

async fn status(pool: &PgPool) -> String {
    sqlx::query_scalar("SELECT migration_status FROM repositories WHERE path = $1")
        .bind(PATH)
        .fetch_one(pool)
        .await
        .expect("status")
}

async fn wait_for_status(pool: &PgPool, wanted: &str) {
    let what = format!("status {wanted}");
    wait_until(&what, Duration::from_secs(30), async || {
        let now = status(pool).await;
        if now == wanted { Ok(()) } else { Err(now) }
    })
    .await;
}

/// Waits until `importer` runs no step; returns how long that took.
async fn wait_idle(importer: &Importer, within: Duration) -> Duration {
    let started = Instant::now();
    wait_until("the step to stop", within, async || {
        match importer.in_flight() {
            0 => Ok(started.elapsed()),
            running => Err(format!("{running} step(s) running")),
        }
    })
    .await
}

async fn count_tags(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM tags")
        .fetch_one(pool)
        .await
        .expect("count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_004_a_late_pre_import_never_overwrites_import_complete() {
    let s = setup().await;
    let (gated, open_gate) = GatedStore::new(Arc::clone(&s.local));
    // The slow pre-import's importer checks for cancellation only every minute: like the
    // original's 5-second window, it does not notice in time.
    let slow = importer(&s, Arc::new(gated), Duration::from_secs(60));
    let other = importer(&s, Arc::clone(&s.local), Duration::from_millis(200));

    // 1. Step 1, a pre-import, starts and is slow.
    let started = slow
        .start_import(PATH, ImportType::Pre, 0, 1)
        .await
        .expect("start");
    assert_eq!(started.outcome(), StartOutcome::Accepted);
    assert_eq!(started.step, 1);
    // 2. It is canceled (through another importer, so the slow one is not told directly).
    let canceled = other.cancel_import(PATH, 1, false).await.expect("cancel");
    assert_eq!(canceled.status(), MigrationStatus::PreImportCanceled);
    // 3. Status check: the cancel belongs to step 1.
    let seen = other.import_status(PATH).await.expect("status");
    assert_eq!(seen.status(), MigrationStatus::PreImportCanceled);
    assert_eq!(seen.detail, "pre import canceled");
    assert_eq!((seen.step, seen.running_step), (1, 0));
    // 4. A repeated start of step 1 is refused: that step is over.
    let stale = other.start_import(PATH, ImportType::Pre, 0, 1).await;
    assert!(
        matches!(
            stale,
            Err(ApiError::StaleStep {
                step,
                current,
                ..
            }) if (step.get(), current.get()) == (1, 1)
        ),
        "{stale:?}"
    );
    assert_eq!(
        tonic::Status::from(stale.expect_err("stale")).code(),
        tonic::Code::FailedPrecondition
    );
    // 5. Milliseconds later, step 2 (a new pre-import) is accepted at once (no settle window:
    // the old step can no longer commit), completes, and step 3, the final import, too.
    other
        .start_import(PATH, ImportType::Pre, 0, 2)
        .await
        .expect("restart");
    wait_for_status(&s.pool, "pre_import_complete").await;
    // Its slot (this importer has one) is given back just after the commit.
    wait_idle(&other, Duration::from_secs(30)).await;
    other
        .start_import(PATH, ImportType::Final, 0, 3)
        .await
        .expect("final");
    wait_for_status(&s.pool, "import_complete").await;
    assert_eq!(count_tags(&s.pool).await, 1);
    // 6. The old pre-import finishes last.
    assert_eq!(slow.in_flight(), 1, "the old pre-import is still running");
    open_gate.send(true).expect("open the gate");
    wait_idle(&slow, Duration::from_secs(30)).await;
    // Its end-of-step write named step 1: refused, whatever the status.
    assert_eq!(status(&s.pool).await, "import_complete");
    assert_eq!(count_tags(&s.pool).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_taken_over_into_the_same_status_never_commits_as_the_new_one() {
    let s = setup().await;
    let (gated, open_gate) = GatedStore::new(Arc::clone(&s.local));
    let (held, _held_gate) = GatedStore::new(Arc::clone(&s.local));
    let frozen = importer(&s, Arc::new(gated), Duration::from_secs(60));
    let live = importer(&s, Arc::new(held), Duration::from_secs(60));
    frozen
        .start_import(PATH, ImportType::Pre, 0, 1)
        .await
        .expect("step 1");
    // The scheduler gave step 1 up (its importer looked dead) and starts step 2: it takes the
    // repository over in the very same status, pre_import_in_progress.
    let taken = live
        .start_import(PATH, ImportType::Pre, 0, 2)
        .await
        .expect("step 2 takes over");
    assert_eq!(taken.step, 2);
    assert_eq!(status(&s.pool).await, "pre_import_in_progress");
    // Step 1 wakes up and tries to commit: refused by its number, although the status matches.
    open_gate.send(true).expect("open the gate");
    wait_idle(&frozen, Duration::from_secs(30)).await;
    assert_eq!(status(&s.pool).await, "pre_import_in_progress");
    let manifests: i64 = sqlx::query_scalar("SELECT count(*) FROM manifests")
        .fetch_one(&s.pool)
        .await
        .expect("count");
    assert_eq!(manifests, 0, "nothing of step 1 is committed");
    let seen = live.import_status(PATH).await.expect("status");
    assert_eq!((seen.step, seen.running_step), (2, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completed_final_import_is_never_canceled_and_a_cancel_ahead_refuses_its_start() {
    let s = setup().await;
    let importer = importer(&s, Arc::clone(&s.local), Duration::from_millis(200));
    importer
        .start_import(PATH, ImportType::Pre, 0, 1)
        .await
        .expect("pre");
    wait_for_status(&s.pool, "pre_import_complete").await;
    // A cancel of step 2 arrives before step 2's start (the start was delayed): it is canceled
    // ahead, and the start, when it comes, is refused.
    let ahead = importer.cancel_import(PATH, 2, false).await.expect("ahead");
    assert_eq!(ahead.step, 2);
    let late = importer.start_import(PATH, ImportType::Final, 0, 2).await;
    assert!(matches!(late, Err(ApiError::StaleStep { .. })), "{late:?}");
    // Step 3, the retried final import, completes.
    importer
        .start_import(PATH, ImportType::Final, 0, 3)
        .await
        .expect("final");
    wait_for_status(&s.pool, "import_complete").await;
    // Neither a cancel of its step nor a forced one undoes it: the completion won.
    for force in [false, true] {
        let refused = importer.cancel_import(PATH, 3, force).await;
        assert!(
            matches!(
                refused,
                Err(ApiError::CannotCancel {
                    status: "import_complete",
                    step,
                    ..
                }) if step.is_some_and(|step| step.get() == 3)
            ),
            "{refused:?}"
        );
    }
    let forced_any = importer.cancel_import(PATH, 0, true).await;
    assert!(forced_any.is_err(), "{forced_any:?}");
    assert_eq!(status(&s.pool).await, "import_complete");
    assert_eq!(count_tags(&s.pool).await, 1);
    // A repeated start of any step finds it on the new platform.
    let again = importer
        .start_import(PATH, ImportType::Final, 0, 4)
        .await
        .expect("start");
    assert_eq!(again.outcome(), StartOutcome::AlreadyImported);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_stops_a_step_in_this_process_at_once_and_commits_nothing() {
    let s = setup().await;
    let (gated, open_gate) = GatedStore::new(Arc::clone(&s.local));
    let importer = importer(&s, Arc::new(gated), Duration::from_secs(60));
    importer
        .start_import(PATH, ImportType::Pre, 0, 0)
        .await
        .expect("start");
    assert_eq!(importer.in_flight(), 1);
    importer
        .cancel_import(PATH, 0, false)
        .await
        .expect("cancel");
    // The poll interval is a minute, so only the in-process signal can stop it this fast.
    let took = wait_idle(&importer, Duration::from_secs(5)).await;
    assert!(took < Duration::from_secs(5));
    open_gate.send(true).expect("open the gate");
    // Once the step's task has ended entirely (its end recorded), nothing of it can still write.
    assert!(
        importer.drain(Duration::from_secs(10)).await,
        "the canceled step's task ended"
    );
    assert_eq!(status(&s.pool).await, "pre_import_canceled");
    let manifests: i64 = sqlx::query_scalar("SELECT count(*) FROM manifests")
        .fetch_one(&s.pool)
        .await
        .expect("count");
    assert_eq!(manifests, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_importer_notices_a_cancel_within_its_poll_interval() {
    let s = setup().await;
    let (gated, _gate_stays_closed) = GatedStore::new(Arc::clone(&s.local));
    let running = importer(&s, Arc::new(gated), Duration::from_millis(200));
    let other = importer(&s, Arc::clone(&s.local), Duration::from_millis(200));
    running
        .start_import(PATH, ImportType::Pre, 0, 0)
        .await
        .expect("start");
    other.cancel_import(PATH, 0, false).await.expect("cancel");
    // The gate stays closed and the step's time limit is a minute: only the poll (every 200 ms)
    // can stop it within seconds.
    wait_idle(&running, Duration::from_secs(10)).await;
    assert_eq!(status(&s.pool).await, "pre_import_canceled");
}

#[tokio::test]
async fn cancel_follows_the_registry_rules() {
    let s = setup().await;
    let importer = importer(&s, Arc::clone(&s.local), Duration::from_millis(200));
    let refused = importer.cancel_import("group/project/none", 0, false).await;
    assert_eq!(refused.expect_err("unknown").code(), ErrorCode::NotFound);
    importer
        .start_import(PATH, ImportType::Pre, 0, 0)
        .await
        .expect("pre");
    wait_for_status(&s.pool, "pre_import_complete").await;
    let refused = importer.cancel_import(PATH, 0, false).await;
    assert_eq!(
        refused.expect_err("nothing running").code(),
        ErrorCode::FailedPrecondition
    );
    let forced = importer.cancel_import(PATH, 0, true).await.expect("forced");
    assert_eq!(forced.status(), MigrationStatus::PreImportCanceled);
    let detail = importer.import_status(PATH).await.expect("status").detail;
    assert_eq!(detail, "forced cancelation");
    // A final import after a canceled pre-import is refused (424).
    let refused = importer.start_import(PATH, ImportType::Final, 0, 0).await;
    assert_eq!(
        refused.expect_err("424").code(),
        ErrorCode::FailedPrecondition
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_fails_running_steps_with_reason_shutdown_and_refuses_new_ones() {
    let s = setup().await;
    let (gated, _gate_stays_closed) = GatedStore::new(Arc::clone(&s.local));
    let importer = importer(&s, Arc::new(gated), Duration::from_secs(60));
    importer
        .start_import(PATH, ImportType::Pre, 0, 0)
        .await
        .expect("start");
    assert_eq!(importer.in_flight(), 1);
    importer.begin_shutdown();
    let refused = importer
        .start_import("group/project/other", ImportType::Pre, 0, 0)
        .await;
    assert_eq!(
        refused.expect_err("shutting down").code(),
        ErrorCode::Unavailable
    );
    // The step records its end within the grace period even though its storage never answers.
    assert!(
        importer.drain(Duration::from_secs(10)).await,
        "drained in time"
    );
    assert_eq!(status(&s.pool).await, "pre_import_failed");
    let detail = importer.import_status(PATH).await.expect("status").detail;
    assert_eq!(detail, "shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repository_is_read_only_exactly_while_its_final_import_runs() {
    let s = setup().await;
    let plain = importer(&s, Arc::clone(&s.local), Duration::from_millis(200));
    let (gated, open_gate) = GatedStore::new(Arc::clone(&s.local));
    let slow = importer(&s, Arc::new(gated), Duration::from_secs(60));
    let unknown = plain
        .check_writable("group/project/none")
        .await
        .expect("check");
    assert!(
        unknown.writable,
        "a repository with no row lives in old storage"
    );
    plain
        .start_import(PATH, ImportType::Pre, 0, 0)
        .await
        .expect("pre");
    wait_for_status(&s.pool, "pre_import_complete").await;
    assert!(
        plain.check_writable(PATH).await.expect("check").writable,
        "writable after the pre-import"
    );
    slow.start_import(PATH, ImportType::Final, 0, 0)
        .await
        .expect("final");
    let during = plain.check_writable(PATH).await.expect("check");
    assert!(!during.writable, "read-only during the final import");
    assert_eq!(during.status(), MigrationStatus::ImportInProgress);
    assert!(
        during.reason.contains("being migrated"),
        "{}",
        during.reason
    );
    open_gate.send(true).expect("open the gate");
    wait_for_status(&s.pool, "import_complete").await;
    assert!(
        plain.check_writable(PATH).await.expect("check").writable,
        "writable on the new platform"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_past_its_time_limit_fails_with_a_reason() {
    let s = setup().await;
    let (gated, _gate_stays_closed) = GatedStore::new(Arc::clone(&s.local));
    let quick = StepLimits {
        pre_import_timeout: Duration::from_millis(300),
        ..limits(Duration::from_secs(60))
    };
    let timed = importer_with(&s, Arc::new(gated), quick);
    timed
        .start_import(PATH, ImportType::Pre, 0, 0)
        .await
        .expect("start");
    wait_for_status(&s.pool, "pre_import_failed").await;
    let detail = timed.import_status(PATH).await.expect("status").detail;
    assert_eq!(detail, "step timed out after 300ms");
    // A full importer answers RESOURCE_EXHAUSTED with a retry delay.
    wait_idle(&timed, Duration::from_secs(5)).await;
    let (gated, _closed) = GatedStore::new(Arc::clone(&s.local));
    let busy = importer(&s, Arc::new(gated), Duration::from_secs(60));
    busy.start_import(PATH, ImportType::Pre, 0, 0)
        .await
        .expect("first");
    let status = tonic::Status::from(
        busy.start_import("group/project/other", ImportType::Pre, 0, 0)
            .await
            .expect_err("full"),
    );
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert_eq!(
        ErrorCode::retry_after(&status),
        Some(Duration::from_secs(1))
    );
}

#[tokio::test]
async fn an_importer_refuses_a_start_with_a_lower_fencing_token_than_it_has_seen() {
    let s = setup().await;
    let importer = importer(&s, Arc::clone(&s.local), Duration::from_millis(200));
    importer
        .start_import(PATH, ImportType::Pre, 10, 0)
        .await
        .expect("fenced start");
    wait_for_status(&s.pool, "pre_import_complete").await;
    // A scheduler whose lease was taken over (token 5 < 10) cannot start the final import.
    let refused = importer.start_import(PATH, ImportType::Final, 5, 0).await;
    assert!(
        matches!(
            refused,
            Err(ApiError::StaleFence {
                token: 5,
                seen: 10,
                ..
            })
        ),
        "{refused:?}"
    );
    assert_eq!(
        status(&s.pool).await,
        "pre_import_complete",
        "nothing changed"
    );
    // The current holder (same or higher token) can.
    importer
        .start_import(PATH, ImportType::Final, 10, 0)
        .await
        .expect("current holder");
    wait_for_status(&s.pool, "import_complete").await;
    let fence: i64 = sqlx::query_scalar("SELECT migration_fence FROM repositories WHERE path = $1")
        .bind(PATH)
        .fetch_one(&s.pool)
        .await
        .expect("fence");
    assert_eq!(fence, 10);
}

/// Starts `import_type` on every importer at once and checks that exactly one accepts and
/// every other is refused as `in_progress` says.
async fn race(importers: &[Importer], import_type: ImportType, in_progress: fn(&ApiError) -> bool) {
    let starts = importers
        .iter()
        .map(|importer| importer.start_import(PATH, import_type, 0, 0));
    let mut accepted = 0;
    let mut refused = Vec::new();
    for answer in futures::future::join_all(starts).await {
        match answer {
            Ok(started) if started.outcome() == StartOutcome::Accepted => accepted += 1,
            Ok(other) => panic!("unexpected answer {other:?}"),
            Err(err) => refused.push(err),
        }
    }
    assert_eq!(accepted, 1, "{refused:?}");
    assert!(refused.iter().all(in_progress), "{refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_importers_starting_one_step_at_once_exactly_one_claims_it() {
    let s = setup().await;
    let (gated, open_gate) = GatedStore::new(Arc::clone(&s.local));
    let gated: Arc<dyn BlobStore> = Arc::new(gated);
    let importers: Vec<Importer> = (0..8)
        .map(|_| importer(&s, Arc::clone(&gated), Duration::from_secs(60)))
        .collect();

    // The repository has no row yet: the claim that creates it wins, the others see it taken.
    race(&importers, ImportType::Pre, |err| {
        matches!(err, ApiError::PreImportInProgress(_))
    })
    .await;
    open_gate.send(true).expect("open the gate");
    wait_for_status(&s.pool, "pre_import_complete").await;
    for importer in &importers {
        wait_idle(importer, Duration::from_secs(30)).await;
    }
    open_gate.send(false).expect("close the gate");
    // The tag is pushed again (the same manifest): its link's version changes, so the final
    // import reads it, and waits at the gate.
    let link = s._dir.path().join(format!(
        "docker/registry/v2/repositories/{PATH}/_manifests/tags/v1/current/link"
    ));
    let digest = std::fs::read(&link).expect("tag link");
    std::fs::remove_file(&link).expect("remove the link");
    std::fs::write(&link, digest).expect("push the tag again");

    // The row exists: one compare-and-set moves it to import_in_progress.
    race(&importers, ImportType::Final, |err| {
        matches!(err, ApiError::ImportInProgress(_))
    })
    .await;
    assert_eq!(status(&s.pool).await, "import_in_progress");
    open_gate.send(true).expect("open the gate");
    wait_for_status(&s.pool, "import_complete").await;
    assert_eq!(count_tags(&s.pool).await, 1);
}

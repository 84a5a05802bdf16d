//! The scheduler's state machine against real PostgreSQL: notifications, duplicate, stale and
//! late; failures, retries and skips; claims within capacity; steps handed back. The lease is in
//! `scheduler_lease.rs`.

use ferry_proto::common::v1::{ImportStats, ImportType, MigrationStatus};
use ferry_proto::scheduler::v1::NotifyImportResultRequest;
use ferry_scheduler::importers::ImporterPool;
use ferry_scheduler::service::{Scheduler, SchedulerService};
use ferry_scheduler::state::MigrationState;
use ferry_scheduler::store::{Abort, Claimed, RepoKey, SchedulerStore};

/// Claims the next `default` repository for its pre-import; there must be one.
async fn claim_default(store: &SchedulerStore) -> Claimed {
    store
        .claim_next_default(None)
        .await
        .expect("claim")
        .expect("a default repository")
}

async fn scheduler_with(paths: &[&str]) -> (Scheduler, SchedulerStore) {
    ferry_tests::scheduler_with(paths, ImporterPool::new(&[]).expect("no importers")).await
}

fn notification(
    path: &str,
    step: impl Into<i64>,
    status: MigrationStatus,
    manifests: u64,
) -> NotifyImportResultRequest {
    NotifyImportResultRequest {
        step: u64::try_from(step.into()).expect("a step number"),
        handed_back: false,
        path: path.into(),
        name: path.rsplit('/').next().unwrap_or(path).into(),
        status: status.into(),
        detail: "test".into(),
        import_type: ImportType::Pre.into(),
        stats: Some(ImportStats {
            manifests,
            bytes_copied: 100,
            ..ImportStats::default()
        }),
    }
}

#[tokio::test]
async fn duplicate_and_stale_notifications_change_nothing() {
    let path = "group/project/app";
    let (scheduler, store) = scheduler_with(&[path]).await;
    let claimed = claim_default(&store).await;
    assert_eq!(claimed.path, path);
    assert!(
        store
            .claim_next_default(None)
            .await
            .expect("claim")
            .is_none(),
        "claimed once"
    );

    // A final-import result while pre-importing is stale: acknowledged, ignored.
    let stale = scheduler
        .notify_import_result(notification(
            path,
            claimed.step,
            MigrationStatus::ImportComplete,
            5,
        ))
        .await
        .expect("notify");
    assert!(stale.duplicate);
    assert_eq!(stale.migration_state.as_str(), "pre_importing");
    // A report that names no step is refused.
    let unnumbered = scheduler
        .notify_import_result(notification(path, 0, MigrationStatus::PreImportComplete, 5))
        .await;
    assert!(
        matches!(&unnumbered, Err(error) if error.to_string().contains("step must be between 1")),
        "{unnumbered:?}"
    );

    let first = scheduler
        .notify_import_result(notification(
            path,
            claimed.step,
            MigrationStatus::PreImportComplete,
            3,
        ))
        .await
        .expect("notify");
    assert_eq!(
        (first.migration_state.as_str(), first.duplicate),
        ("pre_import_done", false)
    );
    let again = scheduler
        .notify_import_result(notification(
            path,
            claimed.step,
            MigrationStatus::PreImportComplete,
            3,
        ))
        .await
        .expect("notify");
    assert_eq!(
        (again.migration_state.as_str(), again.duplicate),
        ("pre_import_done", true)
    );
    let record = store.repository(path).await.expect("read").expect("row");
    assert_eq!(
        record.import_manifests, 3,
        "a duplicate is not counted twice"
    );
    assert_eq!(record.import_bytes_copied, 100);
    assert!(record.migration_pre_import_done_at.is_some());

    let importing = store
        .claim_pre_import_done(None, 1)
        .await
        .expect("claim")
        .pop()
        .expect("ready for final");
    assert_eq!(importing.path, path);
    assert_eq!(
        Some(importing.step),
        claimed.step.next(),
        "the final import is the next step"
    );
    let late = scheduler
        .notify_import_result(notification(
            path,
            claimed.step,
            MigrationStatus::ImportComplete,
            0,
        ))
        .await
        .expect("notify");
    assert!(
        late.duplicate,
        "the pre-import's step cannot end the final import"
    );
    let done = scheduler
        .notify_import_result(notification(
            path,
            importing.step,
            MigrationStatus::ImportComplete,
            0,
        ))
        .await
        .expect("notify");
    assert_eq!(done.migration_state.as_str(), "import_done");
}

#[tokio::test]
async fn a_late_record_of_a_step_never_lands_on_the_next_one() {
    let path = "group/project/quick";
    let (_scheduler, store) = scheduler_with(&[path]).await;
    let claimed = claim_default(&store).await;
    // A pre-import so short that it ended before its start was recorded: the record still
    // lands, on the step it belongs to.
    let ended = store
        .finish_pre_import(path, claimed.step, &ImportStats::default(), None)
        .await
        .expect("finish")
        .expect("applied");
    assert_eq!(ended.importer, None, "nothing was recorded yet");
    // The time recorded is the importer's own, when it claimed the step (whole microseconds,
    // as the answer carries it).
    let accepted_at = chrono::DateTime::from_timestamp_micros(
        (chrono::Utc::now() - chrono::Duration::milliseconds(7)).timestamp_micros(),
    );
    assert!(
        store
            .record_importer(
                claimed.id,
                claimed.step,
                "http://pre",
                accepted_at,
                None,
                None
            )
            .await
            .expect("record")
    );
    let record = store.repository(path).await.expect("read").expect("row");
    assert_eq!(record.migration_importer.as_deref(), Some("http://pre"));
    assert_eq!(record.migration_step_accepted_at, accepted_at);
    // The final import's claim clears both; a late record of the pre-import is refused.
    let finals = store.claim_pre_import_done(None, 4).await.expect("claim");
    assert_eq!(finals.len(), 1);
    let last = finals[0].step;
    let record = store.repository(path).await.expect("read").expect("row");
    assert_eq!(record.migration_importer, None);
    assert_eq!(record.migration_step_accepted_at, None);
    assert!(
        !store
            .record_importer(claimed.id, claimed.step, "http://late", None, None, None)
            .await
            .expect("record"),
        "the pre-import's record must not land on the final import"
    );
    assert!(
        store
            .record_importer(claimed.id, last, "http://final", None, None, None)
            .await
            .expect("record")
    );
    // The step's end names the importer that accepted it.
    let ended = store
        .finish_import(path, last, &ImportStats::default(), None)
        .await
        .expect("finish")
        .expect("applied");
    assert_eq!(ended.importer.as_deref(), Some("http://final"));
}

#[tokio::test]
async fn a_failed_step_names_its_importer_too() {
    let path = "group/project/failing";
    let (_scheduler, store) = scheduler_with(&[path]).await;
    let claimed = claim_default(&store).await;
    assert!(
        store
            .record_importer(claimed.id, claimed.step, "http://failing", None, None, None)
            .await
            .expect("record")
    );
    // Its slot on that importer is free again, like a finished step's.
    let ended = store
        .abort(Abort {
            key: RepoKey::Path(path),
            step: Some(claimed.step),
            from: &[MigrationState::PreImporting],
            error: "broken",
            max_retries: 3,
            counted: true,
            fence: None,
        })
        .await
        .expect("abort")
        .expect("applied");
    assert_eq!(ended.importer.as_deref(), Some("http://failing"));
    assert_eq!(ended.migration_state.as_str(), "import_aborted");
    assert_eq!(ended.next, None);
}

#[tokio::test]
async fn claim_ready_takes_only_the_free_slots() {
    let paths = ["g/p/a", "g/p/b", "g/p/c", "g/p/d", "g/p/e"];
    let (_scheduler, store) = scheduler_with(&paths).await;
    let first = store.claim_ready(None, 3).await.expect("claim");
    assert_eq!(first.len(), 3, "three free slots");
    assert!(
        store.claim_ready(None, 3).await.expect("claim").is_empty(),
        "no slot free"
    );
    store
        .finish_pre_import(&first[0].path, first[0].step, &ImportStats::default(), None)
        .await
        .expect("finish")
        .expect("applied");
    assert!(
        store.claim_ready(None, 3).await.expect("claim").is_empty(),
        "a finished pre-import keeps its slot"
    );
    assert_eq!(
        store.claim_ready(None, 5).await.expect("claim").len(),
        2,
        "a larger capacity frees two more"
    );
}

#[tokio::test]
async fn failures_abort_then_skip_after_max_retries() {
    let path = "group/project/flaky";
    let (scheduler, store) = scheduler_with(&[path]).await;
    let max_retries = store.settings().await.expect("settings").max_retries;
    assert_eq!(max_retries, 3, "the original's default");
    let mut step = store
        .claim_next_default(None)
        .await
        .expect("claim")
        .expect("claimed")
        .step;
    for attempt in 1..=max_retries {
        let response = scheduler
            .notify_import_result(notification(
                path,
                step,
                MigrationStatus::PreImportFailed,
                0,
            ))
            .await
            .expect("notify");
        let record = store.repository(path).await.expect("read").expect("row");
        assert_eq!(record.migration_retries_count, attempt);
        assert_eq!(
            record.migration_aborted_in_state.map(|s| s.as_str()),
            Some("pre_importing")
        );
        if attempt < max_retries {
            assert_eq!(response.migration_state.as_str(), "import_aborted");
            let (retried, pre_import_done) =
                store.next_aborted().await.expect("next").expect("aborted");
            assert_eq!((retried.path.as_str(), pre_import_done), (path, false));
            step = store
                .resume_aborted(&retried, false, true, None)
                .await
                .expect("resume")
                .expect("resumed at a new step")
                .expect("a numbered step");
            assert_eq!(Some(step), retried.step.and_then(|s| s.next()));
        } else {
            assert_eq!(response.migration_state.as_str(), "import_skipped");
            assert_eq!(
                record.migration_skipped_reason.map(|r| r.as_str()),
                Some("too_many_retries")
            );
            assert!(store.next_aborted().await.expect("next").is_none());
        }
    }
}

#[tokio::test]
async fn a_step_handed_back_by_a_shutdown_is_retried_without_counting_a_retry() {
    let path = "group/project/rolled";
    let (scheduler, store) = scheduler_with(&[path]).await;
    let claimed = claim_default(&store).await;
    let mut handed_back = notification(path, claimed.step, MigrationStatus::PreImportFailed, 0);
    handed_back.handed_back = true;
    handed_back.detail = "shutdown".into();
    let response = scheduler
        .notify_import_result(handed_back)
        .await
        .expect("notify");
    assert_eq!(response.migration_state.as_str(), "import_aborted");
    let record = store.repository(path).await.expect("read").expect("row");
    assert_eq!(
        record.migration_retries_count, 0,
        "a rollout spends no retry"
    );
    assert!(
        record
            .migration_last_error
            .as_deref()
            .is_some_and(|e| e.starts_with("handed back")),
        "{:?}",
        record.migration_last_error
    );
    let (retried, _) = store.next_aborted().await.expect("next").expect("aborted");
    assert_eq!(retried.path, path);
}

#[tokio::test]
async fn an_abort_naming_an_older_step_changes_nothing() {
    let path = "group/project/retried";
    let (_scheduler, store) = scheduler_with(&[path]).await;
    let first = claim_default(&store).await;
    let abort = |step| Abort {
        key: RepoKey::Id(first.id),
        step: Some(step),
        from: &[MigrationState::PreImporting],
        error: "could not start pre-importing: AlreadyExists",
        max_retries: 3,
        counted: true,
        fence: None,
    };
    store
        .abort(abort(first.step))
        .await
        .expect("abort")
        .expect("applied");
    let (aborted, _) = store.next_aborted().await.expect("next").expect("aborted");
    let second = store
        .resume_aborted(&aborted, false, true, None)
        .await
        .expect("resume")
        .expect("resumed");
    // A start of the first attempt that hung on a frozen importer answers late: its abort
    // names the first step and leaves the second attempt alone.
    assert!(
        store
            .abort(abort(first.step))
            .await
            .expect("abort")
            .is_none()
    );
    let record = store.repository(path).await.expect("read").expect("row");
    assert_eq!(record.migration_state.as_str(), "pre_importing");
    assert_eq!(record.migration_step, second);
    assert_eq!(record.migration_retries_count, 1);
}

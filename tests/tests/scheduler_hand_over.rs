//! A step's end applied by the lease holder claims what comes next in the same statement (the
//! hand-over, `scheduler/src/store/step_end.rs`), against real PostgreSQL: when it hands over,
//! and every case where it must leave the claim to the enqueue loop.

use ferry_proto::common::v1::ImportStats;
use ferry_scheduler::state::MigrationState;
use ferry_scheduler::store::{Abort, RepoKey, SchedulerStore, SettingsPatch};
use ferry_shared::step::Step;
use ferry_tests::registered_store;

/// The lease holder's token in these tests; the fence starts at it.
const HOLDER: u64 = 5;

/// A store with `paths` registered, the migration enabled at `capacity` and the fence at
/// [`HOLDER`].
async fn store_with(paths: &[&str], capacity: i32) -> SchedulerStore {
    let (store, _) = registered_store("hand_over", paths).await;
    store
        .update_settings(&SettingsPatch {
            enabled: Some(true),
            capacity: Some(capacity),
            ..SettingsPatch::default()
        })
        .await
        .expect("settings");
    assert!(store.raise_fence(HOLDER).await.expect("raise"));
    store
}

async fn state(store: &SchedulerStore, path: &str) -> String {
    store
        .repository(path)
        .await
        .expect("read")
        .expect("row")
        .migration_state
        .to_string()
}

/// The repository's current step.
async fn step_of(store: &SchedulerStore, path: &str) -> Step {
    store
        .repository(path)
        .await
        .expect("read")
        .expect("row")
        .migration_step
        .expect("a numbered step")
}

/// Claims `path`'s pre-import (the only ready one at that moment, by priority) and finishes it.
async fn pre_import_done(store: &SchedulerStore, path: &str) {
    assert!(store.prioritize(path).await.expect("prioritize"));
    let claimed = store
        .claim_next_default(Some(HOLDER))
        .await
        .expect("claim")
        .expect("ready");
    assert_eq!(claimed.path, path);
    store
        .finish_pre_import(
            path,
            step_of(store, path).await,
            &ImportStats::default(),
            None,
        )
        .await
        .expect("finish")
        .expect("applied");
}

/// Moves `path` to `importing` through its pre-import, applied with a hand-over.
async fn importing(store: &SchedulerStore, path: &str) {
    assert!(store.prioritize(path).await.expect("prioritize"));
    store
        .claim_next_default(Some(HOLDER))
        .await
        .expect("claim")
        .expect("ready");
    let ended = store
        .finish_pre_import_and_start_import(
            path,
            step_of(store, path).await,
            &ImportStats::default(),
            HOLDER,
        )
        .await
        .expect("finish")
        .expect("applied");
    assert_eq!(ended.migration_state.as_str(), "importing");
}

fn stats(manifests: u64) -> ImportStats {
    ImportStats {
        manifests,
        ..ImportStats::default()
    }
}

#[tokio::test]
async fn a_finished_pre_import_moves_straight_on_to_its_final_import() {
    let store = store_with(&["g/p/a"], 2).await;
    store
        .claim_next_default(Some(HOLDER))
        .await
        .expect("claim")
        .expect("ready");
    store
        .record_importer(
            store.repository("g/p/a").await.unwrap().unwrap().id,
            step_of(&store, "g/p/a").await,
            "http://pre",
            None,
            Some(3),
            Some(HOLDER),
        )
        .await
        .expect("record");
    let ended = store
        .finish_pre_import_and_start_import(
            "g/p/a",
            step_of(&store, "g/p/a").await,
            &stats(7),
            HOLDER,
        )
        .await
        .expect("finish")
        .expect("applied");
    assert_eq!(ended.migration_state.as_str(), "importing");
    assert_eq!(
        ended.importer.as_deref(),
        Some("http://pre"),
        "the end names the importer that ran the pre-import"
    );
    assert_eq!(ended.next.expect("the final import").path, "g/p/a");
    let record = store.repository("g/p/a").await.unwrap().unwrap();
    assert_eq!(record.import_manifests, 7, "the pre-import's figures count");
    assert!(record.migration_pre_import_done_at.is_some());
    assert!(record.migration_import_started_at.is_some());
    assert_eq!(
        record.migration_importer, None,
        "cleared for the final import"
    );
    assert_eq!(record.migration_step_accepted_at, None);
    assert!(
        store
            .finish_pre_import_and_start_import(
                "g/p/a",
                step_of(&store, "g/p/a").await,
                &stats(7),
                HOLDER
            )
            .await
            .expect("finish")
            .is_none(),
        "a duplicate end changes nothing"
    );
    assert_eq!(
        store
            .repository("g/p/a")
            .await
            .unwrap()
            .unwrap()
            .import_manifests,
        7
    );
}

#[tokio::test]
async fn a_stale_holder_or_a_disabled_migration_only_ends_the_pre_import() {
    let store = store_with(&["g/p/a", "g/p/b"], 2).await;
    let claimed = store.claim_ready(Some(HOLDER), 2).await.expect("claim");
    assert_eq!(claimed.len(), 2);
    let ended = store
        .finish_pre_import_and_start_import(
            "g/p/a",
            step_of(&store, "g/p/a").await,
            &stats(1),
            HOLDER - 1,
        )
        .await
        .expect("finish")
        .expect("the end applies whoever reports it");
    assert_eq!(ended.migration_state.as_str(), "pre_import_done");
    assert!(ended.next.is_none(), "an old token claims nothing");
    store
        .update_settings(&SettingsPatch {
            enabled: Some(false),
            ..SettingsPatch::default()
        })
        .await
        .expect("settings");
    let ended = store
        .finish_pre_import_and_start_import(
            "g/p/b",
            step_of(&store, "g/p/b").await,
            &stats(1),
            HOLDER,
        )
        .await
        .expect("finish")
        .expect("applied");
    assert_eq!(ended.migration_state.as_str(), "pre_import_done");
    assert!(ended.next.is_none(), "a disabled migration starts nothing");
}

#[tokio::test]
async fn a_finished_final_import_hands_its_slot_to_the_next_ready_repository() {
    let store = store_with(&["g/p/a", "g/p/b", "g/p/c"], 1).await;
    importing(&store, "g/p/a").await;
    assert!(store.prioritize("g/p/c").await.expect("prioritize"));
    let ended = store
        .finish_import_and_claim_next("g/p/a", step_of(&store, "g/p/a").await, &stats(2), HOLDER)
        .await
        .expect("finish")
        .expect("applied");
    assert_eq!(ended.migration_state.as_str(), "import_done");
    assert_eq!(
        ended.next.expect("the freed slot's next").path,
        "g/p/c",
        "highest priority first"
    );
    assert_eq!(state(&store, "g/p/c").await, "pre_importing");
    assert_eq!(state(&store, "g/p/b").await, "default");
    assert_eq!(store.in_process_count().await.expect("count"), 1);
    assert!(
        store
            .finish_import_and_claim_next(
                "g/p/a",
                step_of(&store, "g/p/a").await,
                &stats(2),
                HOLDER
            )
            .await
            .expect("finish")
            .is_none(),
        "a duplicate end claims nothing more"
    );
    assert_eq!(state(&store, "g/p/b").await, "default");
}

#[tokio::test]
async fn a_hand_over_never_goes_over_the_capacity() {
    let store = store_with(&["g/p/a", "g/p/b", "g/p/c", "g/p/d"], 3).await;
    importing(&store, "g/p/a").await;
    let others = store.claim_ready(Some(HOLDER), 3).await.expect("claim");
    assert_eq!(others.len(), 2, "the capacity is full");
    // The capacity is lowered below what is in process: the end frees a slot that is not free.
    store
        .update_settings(&SettingsPatch {
            capacity: Some(2),
            ..SettingsPatch::default()
        })
        .await
        .expect("settings");
    let ended = store
        .finish_import_and_claim_next("g/p/a", step_of(&store, "g/p/a").await, &stats(1), HOLDER)
        .await
        .expect("finish")
        .expect("applied");
    assert_eq!(ended.migration_state.as_str(), "import_done");
    assert!(
        ended.next.is_none(),
        "three in process against two: no slot"
    );
    assert_eq!(state(&store, "g/p/d").await, "default");
    assert_eq!(store.in_process_count().await.expect("count"), 2);
}

#[tokio::test]
async fn a_hand_over_leaves_the_slot_to_the_loop_when_something_else_goes_first() {
    let store = store_with(&["g/p/a", "g/p/b", "g/p/c", "g/p/x", "g/p/y"], 2).await;
    // An old token claims nothing.
    importing(&store, "g/p/a").await;
    let ended = store
        .finish_import_and_claim_next(
            "g/p/a",
            step_of(&store, "g/p/a").await,
            &stats(1),
            HOLDER - 1,
        )
        .await
        .expect("finish")
        .expect("the end applies");
    assert_eq!(ended.migration_state.as_str(), "import_done");
    assert!(ended.next.is_none(), "an old token claims nothing");
    // A waiting time after each step: the loop decides when the next one starts.
    importing(&store, "g/p/b").await;
    store
        .update_settings(&SettingsPatch {
            enqueue_waiting_time: Some(std::time::Duration::from_secs(60)),
            ..SettingsPatch::default()
        })
        .await
        .expect("settings");
    let ended = store
        .finish_import_and_claim_next("g/p/b", step_of(&store, "g/p/b").await, &stats(1), HOLDER)
        .await
        .expect("finish")
        .expect("applied");
    assert!(ended.next.is_none(), "new repositories wait after a step");
    store
        .update_settings(&SettingsPatch {
            enqueue_waiting_time: Some(std::time::Duration::ZERO),
            ..SettingsPatch::default()
        })
        .await
        .expect("settings");
    // An aborted repository waits: it goes first, and only the loop asks its importer.
    pre_import_done(&store, "g/p/x").await;
    store
        .claim_pre_import_done(Some(HOLDER), 1)
        .await
        .expect("claim the final");
    store
        .abort(Abort {
            key: RepoKey::Path("g/p/x"),
            step: Some(step_of(&store, "g/p/x").await),
            from: &[MigrationState::Importing],
            error: "lost",
            max_retries: 3,
            counted: true,
            fence: None,
        })
        .await
        .expect("abort")
        .expect("applied");
    assert_eq!(state(&store, "g/p/x").await, "import_aborted");
    importing(&store, "g/p/c").await;
    let ended = store
        .finish_import_and_claim_next("g/p/c", step_of(&store, "g/p/c").await, &stats(1), HOLDER)
        .await
        .expect("finish")
        .expect("applied");
    assert_eq!(ended.migration_state.as_str(), "import_done");
    assert!(ended.next.is_none(), "the aborted repository goes first");
    assert_eq!(
        state(&store, "g/p/y").await,
        "default",
        "ready, and left to the loop"
    );
}

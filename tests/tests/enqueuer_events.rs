//! The enqueuer driven one event at a time (`Enqueuer::handle(event) -> Outcome`), against real
//! PostgreSQL and Redis and an importer serving over gRPC: what each event decides, with no
//! timer and no sleeping.

use std::sync::Arc;
use std::time::Duration;

use ferry_proto::common::v1::{ImportStats, ImportType, MigrationStatus};
use ferry_scheduler::enqueue::{
    EnqueueConfig, Enqueuer, Event, Message, Outcome, Start, StepEndAnswer, StepReport,
};
use ferry_scheduler::guard::Guard;
use ferry_scheduler::importers::ImporterPool;
use ferry_scheduler::metrics::MigrationMetrics;
use ferry_scheduler::state::MigrationState;
use ferry_scheduler::store::{SchedulerStore, SettingsPatch};
use ferry_shared::step::{MaybeStep, Step};
use ferry_tests::wait::wait_until;
use ferry_tests::{ImporterHarness, serve_importer};
use ferry_tests::{registered_store, replica_keys, unique_suffix};

const PATHS: [&str; 3] = ["events/p1/app", "events/p2/app", "events/p3/app"];

/// A scheduler database with [`PATHS`] registered and the migration enabled at capacity 2, an
/// importer serving the repositories' old layout, and the Redis prefix replicas share.
struct Setup {
    store: SchedulerStore,
    importer: ImporterHarness,
    importer_url: String,
    prefix: String,
}

impl Setup {
    async fn new() -> Self {
        let importer = ImporterHarness::new().await;
        let layout = importer.layout();
        for path in PATHS {
            layout.image(path, "latest", path);
        }
        let importer_url = format!(
            "http://127.0.0.1:{}",
            serve_importer(importer.importer.clone()).await
        );
        let (store, _) = registered_store("scheduler", &PATHS).await;
        store
            .update_settings(&SettingsPatch {
                enabled: Some(true),
                capacity: Some(2),
                enqueue_waiting_time: Some(Duration::ZERO),
                ..SettingsPatch::default()
            })
            .await
            .expect("settings");
        Self {
            store,
            importer,
            importer_url,
            prefix: format!("ferry-test-{}", unique_suffix()),
        }
    }

    /// One replica's enqueuer (`replica` names its lease holder).
    async fn replica(&self, replica: &str) -> Enqueuer {
        let (triggers, lease) = replica_keys(&self.prefix, replica, Duration::from_secs(30)).await;
        let importers =
            Arc::new(ImporterPool::new(std::slice::from_ref(&self.importer_url)).expect("pool"));
        let guard = Guard {
            store: self.store.clone(),
            importers: Arc::clone(&importers),
            metrics: MigrationMetrics::default(),
        };
        let storage =
            ferry_shared::storage::open(&format!("file://{}", self.importer.root.display()))
                .expect("storage");
        let (enqueuer, _handle) = Enqueuer::new(
            self.store.clone(),
            lease,
            triggers,
            EnqueueConfig {
                interval: Duration::from_secs(3600),
                guard_interval: Duration::from_secs(3600),
            },
            guard,
            importers,
            storage,
            MigrationMetrics::default(),
        );
        enqueuer
    }

    async fn state(&self, path: &str) -> (MigrationState, i64) {
        let record = self
            .store
            .repository(path)
            .await
            .expect("read")
            .expect("registered");
        (record.migration_state, record.migration_step.db())
    }

    /// Waits until the importer has committed `path`'s step as `status`.
    async fn importer_reached(&self, path: &str, status: &str) {
        wait_until(
            &format!("{path} {status} on the importer"),
            Duration::from_secs(30),
            async || {
                let seen: Option<String> =
                    sqlx::query_scalar("SELECT migration_status FROM repositories WHERE path = $1")
                        .bind(path)
                        .fetch_optional(&self.importer.pool)
                        .await
                        .expect("read");
                if seen.as_deref() == Some(status) {
                    Ok(())
                } else {
                    Err(seen)
                }
            },
        )
        .await;
    }
}

/// A step's end as the importer would report it, and where its answer comes back.
fn step_ended(path: &str, step: i64, status: MigrationStatus) -> (Event, StepEndAnswer) {
    let (message, answer) = Message::step_ended(StepReport {
        path: path.to_owned(),
        step: Step::try_from(step).expect("a step"),
        status,
        detail: String::new(),
        stats: ImportStats::default(),
        handed_back: false,
    });
    (Event::Message(message), answer)
}

fn start(path: &str, step: i64, import_type: ImportType) -> Start {
    Start {
        path: path.to_owned(),
        step: Step::try_from(step).expect("a step"),
        import_type,
    }
}

#[tokio::test]
async fn a_tick_takes_the_free_lease_and_fills_every_free_slot() {
    let setup = Setup::new().await;
    let mut enqueuer = setup.replica("replica-a").await;
    let first = enqueuer.handle(Event::Tick).await;
    assert!(first.took_lease.is_some() && first.leading, "{first:?}");
    assert_eq!(
        first.started,
        vec![
            start(PATHS[0], 1, ImportType::Pre),
            start(PATHS[1], 1, ImportType::Pre),
        ],
        "capacity 2: the first two by path"
    );
    enqueuer.starts_settled().await;
    for path in &PATHS[..2] {
        assert_eq!(setup.state(path).await, (MigrationState::PreImporting, 1));
    }
    assert_eq!(setup.state(PATHS[2]).await, (MigrationState::Default, 0));
    // Both slots are taken: the next tick starts nothing and keeps the lease.
    let second = enqueuer.handle(Event::Tick).await;
    assert_eq!(
        second,
        Outcome {
            leading: true,
            ..Outcome::default()
        }
    );
}

#[tokio::test]
async fn a_finished_pre_import_starts_its_final_import_in_the_same_event() {
    let setup = Setup::new().await;
    let mut enqueuer = setup.replica("replica-a").await;
    enqueuer.handle(Event::Tick).await;
    enqueuer.starts_settled().await;
    setup
        .importer_reached(PATHS[0], "pre_import_complete")
        .await;
    let (event, answered) = step_ended(PATHS[0], 1, MigrationStatus::PreImportComplete);
    let outcome = enqueuer.handle(event).await;
    assert_eq!(outcome.ended, 1, "{outcome:?}");
    assert_eq!(outcome.started, vec![start(PATHS[0], 2, ImportType::Final)]);
    let applied = answered.await.expect("answered").expect("applied");
    assert_eq!(
        applied.map(|end| end.migration_state),
        Some(MigrationState::Importing)
    );
    enqueuer.starts_settled().await;
    assert_eq!(setup.state(PATHS[0]).await, (MigrationState::Importing, 2));
    // The same report again (an importer retrying its notification) changes nothing.
    let (event, _) = step_ended(PATHS[0], 1, MigrationStatus::PreImportComplete);
    let repeated = enqueuer.handle(event).await;
    assert_eq!(
        (repeated.ended, repeated.started.len()),
        (0, 0),
        "{repeated:?}"
    );
    // The final import's end frees its slot, which the same event gives to the next repository.
    setup.importer_reached(PATHS[0], "import_complete").await;
    let (event, _) = step_ended(PATHS[0], 2, MigrationStatus::ImportComplete);
    let finished = enqueuer.handle(event).await;
    assert_eq!(finished.ended, 1, "{finished:?}");
    assert_eq!(finished.started, vec![start(PATHS[2], 1, ImportType::Pre)]);
    assert_eq!(setup.state(PATHS[0]).await, (MigrationState::ImportDone, 2));
}

#[tokio::test]
async fn a_replica_without_the_lease_applies_an_end_alone_and_wakes_the_holder() {
    let setup = Setup::new().await;
    let mut holder = setup.replica("replica-a").await;
    let mut other = setup.replica("replica-b").await;
    assert!(holder.handle(Event::Tick).await.leading);
    holder.starts_settled().await;
    // The lease is taken: the other replica's tick claims nothing.
    let idle = other.handle(Event::Tick).await;
    assert_eq!(idle, Outcome::default());
    setup
        .importer_reached(PATHS[1], "pre_import_complete")
        .await;
    let (event, _) = step_ended(PATHS[1], 1, MigrationStatus::PreImportComplete);
    let outcome = other.handle(event).await;
    assert_eq!(
        outcome,
        Outcome {
            ended: 1,
            woke_holder: true,
            ..Outcome::default()
        }
    );
    assert_eq!(
        setup.state(PATHS[1]).await,
        (MigrationState::PreImportDone, 1)
    );
    // The holder's next pass starts the final import the end made ready.
    let pass = holder.handle(Event::Tick).await;
    assert_eq!(pass.started, vec![start(PATHS[1], 2, ImportType::Final)]);
}

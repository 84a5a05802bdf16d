//! The fence's ordering against real PostgreSQL: a new lease holder's raise and the old holder's
//! writes never interleave. A write holding the current token takes the fence row `FOR SHARE`, so
//! a raise waits for it to commit; a write that meets a raise in progress waits for it and is then
//! refused. Each test holds one side open in a transaction of its own and checks the other waits.

use std::time::Duration;

use ferry_scheduler::inventory::new_repository;
use ferry_scheduler::store::SchedulerStore;
use ferry_shared::ids::RepositoryPath;
use ferry_shared::step::Step;
use ferry_tests::{fresh_database, wait_until};
use sqlx::{Connection, PgConnection};
use tokio::task::JoinHandle;

const PATH: &str = "group/project/app";
/// The step the repository's first claim numbers.
const STEP: Step = Step::FIRST;

/// A store with one repository claimed by the holder of token 1; its database's URL.
async fn claimed_by_first_holder() -> (SchedulerStore, String, i64) {
    let url = fresh_database("fence").await;
    let store = SchedulerStore::connect(&url, 4).await.expect("connect");
    store.migrate().await.expect("migrate");
    let path = RepositoryPath::parse(PATH).expect("path");
    store
        .register(&[new_repository(&path, 2)])
        .await
        .expect("register");
    assert!(store.raise_fence(1).await.expect("raise"));
    let claimed = store
        .claim_next_default(Some(1))
        .await
        .expect("claim")
        .expect("a ready repository");
    (store, url, claimed.id)
}

/// Watches `task` until it has finished (true) or PostgreSQL shows `waiting` sessions of this
/// database waiting for a lock (false), whichever comes first; panics after 30 s of neither.
async fn finished_or_waiting<T>(url: &str, task: &JoinHandle<T>, waiting: i64) -> bool {
    let mut watcher = PgConnection::connect(url).await.expect("connect");
    wait_until(
        "the task to finish or sessions to wait for a lock",
        Duration::from_secs(30),
        async || {
            if task.is_finished() {
                return Ok(true);
            }
            let waits: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            .fetch_one(&mut watcher)
            .await
            .expect("sessions");
            if waits >= waiting {
                Ok(false)
            } else {
                Err(format!("running, {waits} session(s) waiting for a lock"))
            }
        },
    )
    .await
}

#[tokio::test]
async fn a_raise_waits_for_the_old_holders_write_in_flight() {
    let (store, url, id) = claimed_by_first_holder().await;
    // The old holder's write is in flight: it passed the fence and waits for its row, which
    // another transaction holds.
    let mut row_holder = PgConnection::connect(&url).await.expect("connect");
    let mut held = row_holder.begin().await.expect("begin");
    sqlx::query("SELECT 1 FROM container_repositories WHERE id = $1 FOR UPDATE")
        .bind(id)
        .execute(&mut *held)
        .await
        .expect("lock the row");
    let write = tokio::spawn({
        let store = store.clone();
        async move {
            store
                .record_importer(id, STEP, "http://old", None, Some(3), Some(1))
                .await
        }
    });
    assert!(
        !finished_or_waiting(&url, &write, 1).await,
        "the write waits for its row"
    );
    // A new holder raises the fence: it must wait until the old write has committed.
    let raise = tokio::spawn({
        let store = store.clone();
        async move { store.raise_fence(2).await }
    });
    assert!(
        !finished_or_waiting(&url, &raise, 2).await,
        "the raise must wait for the write that passed the old fence"
    );
    held.commit().await.expect("release the row");
    assert!(
        write.await.expect("join").expect("write"),
        "the write that passed the fence first lands"
    );
    assert!(raise.await.expect("join").expect("raise"));
    assert!(
        !store
            .record_importer(id, STEP, "http://late", None, None, Some(1))
            .await
            .expect("write"),
        "after the raise, the old token writes nothing"
    );
    let record = store.repository(PATH).await.expect("read").expect("row");
    assert_eq!(record.migration_importer.as_deref(), Some("http://old"));
    assert_eq!(tags_count(&mut row_holder, id).await, Some(3));
    assert_eq!(store.current_fence().await.expect("fence"), 2);
}

#[tokio::test]
async fn an_old_write_that_meets_a_raise_in_progress_waits_and_is_refused() {
    let (store, url, id) = claimed_by_first_holder().await;
    let mut raiser = PgConnection::connect(&url).await.expect("connect");
    let mut raising = raiser.begin().await.expect("begin");
    sqlx::query("UPDATE scheduler_fence SET fence = 2")
        .execute(&mut *raising)
        .await
        .expect("raise, not committed yet");
    let write = tokio::spawn({
        let store = store.clone();
        async move {
            store
                .record_importer(id, STEP, "http://old", None, None, Some(1))
                .await
        }
    });
    assert!(
        !finished_or_waiting(&url, &write, 1).await,
        "the old write waits for the raise in progress"
    );
    raising.commit().await.expect("commit the raise");
    assert!(
        !write.await.expect("join").expect("write"),
        "once the raise commits, the old token is refused"
    );
    let record = store.repository(PATH).await.expect("read").expect("row");
    assert_eq!(record.migration_importer, None);
    // The new holder writes, and its writes do not wait for one another.
    let writes = (0..8).map(|_| {
        let store = store.clone();
        async move {
            store
                .record_importer(id, STEP, "http://new", None, Some(5), Some(2))
                .await
        }
    });
    for landed in futures::future::join_all(writes).await {
        assert!(landed.expect("write"));
    }
    let record = store.repository(PATH).await.expect("read").expect("row");
    assert_eq!(record.migration_importer.as_deref(), Some("http://new"));
}

#[tokio::test]
async fn the_current_holders_writes_share_the_fence_row() {
    let (store, url, id) = claimed_by_first_holder().await;
    // One of the holder's writes is open and holds the fence row (shared) ...
    let mut open = PgConnection::connect(&url).await.expect("connect");
    let mut tx = open.begin().await.expect("begin");
    sqlx::query("SELECT 1 FROM scheduler_fence WHERE fence = 1 FOR SHARE")
        .execute(&mut *tx)
        .await
        .expect("share the fence row");
    // ... and another of its writes does not wait for it.
    let write = tokio::spawn({
        let store = store.clone();
        async move {
            store
                .record_importer(id, STEP, "http://a", None, Some(1), Some(1))
                .await
        }
    });
    assert!(
        finished_or_waiting(&url, &write, 1).await,
        "a write with the current token never waits for another"
    );
    assert!(write.await.expect("join").expect("write"));
    tx.commit().await.expect("commit");
    assert_eq!(tags_count(&mut open, id).await, Some(1));
}

/// The tag count recorded with the step's start.
async fn tags_count(connection: &mut PgConnection, id: i64) -> Option<i32> {
    sqlx::query_scalar("SELECT migration_tags_count FROM container_repositories WHERE id = $1")
        .bind(id)
        .fetch_one(connection)
        .await
        .expect("read")
}

//! The enqueue lease and its triggers against real Redis and PostgreSQL: one holder at a time,
//! fenced so a holder whose lease was taken over cannot write, visible to operators, and never
//! stuck longer than a TTL after a holder dies; triggers that collapse while a pass is pending.

use std::time::Duration;

use ferry_proto::common::v1::ImportStats;
use ferry_scheduler::enqueue::Triggers;
use ferry_scheduler::importers::ImporterPool;
use ferry_scheduler::lease::{Lease, LeaseConfig};
use ferry_scheduler::service::{Scheduler, SchedulerService};
use ferry_scheduler::state::MigrationState;
use ferry_scheduler::store::{Abort, RepoKey, SchedulerStore};
use ferry_tests::{redis_url, unique_suffix, wait_until};

async fn redis() -> redis::aio::ConnectionManager {
    let client = redis::Client::open(redis_url()).expect("redis url");
    redis::aio::ConnectionManager::new(client)
        .await
        .expect("redis (run `make test`)")
}

fn lease_config(ttl: Duration) -> LeaseConfig {
    let prefix = format!("ferry-test-{}", unique_suffix());
    LeaseConfig {
        key: format!("{prefix}:lease"),
        fence_key: format!("{prefix}:fence"),
        ttl,
        holder: format!("test-holder-{prefix}"),
    }
}

async fn scheduler_with(paths: &[&str]) -> (Scheduler, SchedulerStore) {
    ferry_tests::scheduler_with(paths, ImporterPool::new(&[]).expect("no importers")).await
}

#[tokio::test]
async fn the_lease_is_exclusive_fenced_and_released_only_by_its_owner() {
    let config = lease_config(Duration::from_secs(10));
    let a = Lease::new(redis().await, config.clone());
    let b = Lease::new(redis().await, config);
    let held_a = a
        .try_acquire(0)
        .await
        .expect("redis")
        .expect("free lease is taken");
    assert!(held_a.is_valid().await);
    assert!(
        b.try_acquire(0).await.expect("redis").is_none(),
        "a held lease is exclusive"
    );
    assert!(a.renew(&held_a).await.expect("redis"), "the owner renews");

    a.release(&held_a).await.expect("release");
    assert!(
        !held_a.is_valid().await,
        "a released lease is no longer valid for its holder"
    );
    let held_b = b
        .try_acquire(0)
        .await
        .expect("redis")
        .expect("released lease is free");
    assert!(
        held_b.fence > held_a.fence,
        "each acquisition takes a higher fencing token"
    );
    // The old holder can neither renew nor release the new holder's lease.
    assert!(!a.renew(&held_a).await.expect("redis"));
    a.release(&held_a).await.expect("release is a no-op");
    assert!(
        a.try_acquire(0).await.expect("redis").is_none(),
        "B still holds it"
    );
    assert!(held_b.is_valid().await);
}

#[tokio::test]
async fn an_abandoned_lease_blocks_for_at_most_its_ttl() {
    let config = lease_config(Duration::from_secs(2));
    let crashed = Lease::new(redis().await, config.clone());
    let other = Lease::new(redis().await, config);
    let abandoned = crashed.try_acquire(0).await.expect("redis").expect("taken");
    assert!(other.try_acquire(0).await.expect("redis").is_none());
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert!(
        !abandoned.is_valid().await,
        "the holder's local deadline passed before the TTL"
    );
    let next = other
        .try_acquire(0)
        .await
        .expect("redis")
        .expect("expired lease is free");
    assert!(next.fence > abandoned.fence);
}

#[tokio::test]
async fn a_holder_whose_lease_was_taken_over_cannot_write() {
    let paths = ["group/project/a", "group/project/b", "group/project/c"];
    let (_scheduler, store) = scheduler_with(&paths).await;
    let config = lease_config(Duration::from_millis(300));
    let paused = Lease::new(redis().await, config.clone());
    let successor = Lease::new(redis().await, config);
    let old = paused.try_acquire(0).await.expect("redis").expect("taken");
    let first = store
        .claim_next_default(Some(old.fence))
        .await
        .expect("claim");
    assert!(first.is_some(), "the holder writes with its token");
    // The holder stalls past its TTL (a long GC pause, SIGSTOP); another replica takes over.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let new = successor
        .try_acquire(0)
        .await
        .expect("redis")
        .expect("expired lease is free");
    assert!(new.fence > old.fence);
    let second = store
        .claim_next_default(Some(new.fence))
        .await
        .expect("claim");
    assert!(second.is_some(), "the new holder writes");
    // The old holder resumes and tries to dispatch: the database refuses its older token.
    assert!(
        store
            .claim_next_default(Some(old.fence))
            .await
            .expect("claim")
            .is_none()
    );
    let first = first.expect("claimed");
    let refused = store
        .record_importer(
            first.id,
            first.step,
            "http://stale",
            None,
            None,
            Some(old.fence),
        )
        .await
        .expect("write");
    assert!(!refused, "a stale holder's write changes nothing");
    let aborted = store
        .abort(Abort {
            key: RepoKey::Id(first.id),
            step: Some(first.step),
            from: &[MigrationState::PreImporting],
            error: "stale",
            max_retries: 3,
            counted: true,
            fence: Some(old.fence),
        })
        .await
        .expect("abort");
    assert_eq!(aborted, None);
    assert!(
        store
            .record_importer(
                first.id,
                first.step,
                "http://live",
                None,
                None,
                Some(new.fence)
            )
            .await
            .expect("write")
    );
    // Writes any replica may make (notifications) are not fenced.
    assert!(
        store
            .finish_pre_import(&first.path, first.step, &ImportStats::default(), None)
            .await
            .expect("finish")
            .is_some()
    );
    // One default repository is left; only the current holder can take it.
    assert!(
        store
            .claim_next_default(Some(old.fence))
            .await
            .expect("claim")
            .is_none()
    );
    assert!(
        store
            .claim_next_default(Some(new.fence))
            .await
            .expect("claim")
            .is_some()
    );
}

#[tokio::test]
async fn a_lost_fence_counter_never_hands_out_a_token_the_database_refuses() {
    let config = lease_config(Duration::from_secs(5));
    let lease = Lease::new(redis().await, config.clone());
    // Redis restarted empty: the counter is gone, while the database has seen token 41.
    let held = lease.try_acquire(41).await.expect("redis").expect("taken");
    assert_eq!(held.fence, 42);
    lease.release(&held).await.expect("release");
    let next = lease.try_acquire(0).await.expect("redis").expect("taken");
    assert_eq!(next.fence, 43, "the counter continues above the floor");
}

#[tokio::test]
async fn triggers_collapse_and_an_orphaned_pending_key_blocks_for_at_most_one_ttl() {
    use futures::StreamExt;
    let prefix = format!("ferry-test-{}", unique_suffix());
    let channel = format!("{prefix}:wake");
    let client = redis::Client::open(redis_url()).expect("redis url");
    let mut pubsub = client.get_async_pubsub().await.expect("pubsub");
    pubsub.subscribe(&channel).await.expect("subscribe");
    let mut wakes = pubsub.into_on_message();
    let ttl = Duration::from_secs(2);
    let triggers = Triggers::new(
        redis().await,
        &prefix,
        channel.clone(),
        "replica-a".into(),
        ttl,
    );

    // Many triggers before the loop runs collapse into one wake-up.
    assert!(triggers.trigger().await.expect("trigger"));
    for _ in 0..5 {
        assert!(
            !triggers.trigger().await.expect("trigger"),
            "collapsed into the pending run"
        );
    }
    assert_eq!(triggers.deduplicated(), 5);
    tokio::time::timeout(Duration::from_secs(2), wakes.next())
        .await
        .expect("one wake")
        .expect("message");
    // The pass consumes it; the next trigger wakes again.
    triggers.consume().await.expect("consume");
    assert!(triggers.trigger().await.expect("trigger"));
    tokio::time::timeout(Duration::from_secs(2), wakes.next())
        .await
        .expect("wake")
        .expect("message");
    triggers.consume().await.expect("consume");

    // A run that owned the key died without consuming it, and the key has no expiry at all
    // (the runbook's "stuck deduplication"). Triggers resume within one TTL, with no human action.
    let mut redis = redis().await;
    let _: () = redis::cmd("SET")
        .arg(format!("{prefix}:enqueuer:pending"))
        .arg("dead-run")
        .query_async(&mut redis)
        .await
        .expect("orphan");
    let started = std::time::Instant::now();
    assert!(
        !triggers.trigger().await.expect("trigger"),
        "the orphan collapses this one..."
    );
    wait_until(
        "a trigger to wake again",
        Duration::from_secs(10).saturating_sub(started.elapsed()),
        async || {
            if triggers.trigger().await.expect("trigger") {
                Ok(())
            } else {
                Err("still blocked")
            }
        },
    )
    .await;
    let blocked = started.elapsed();
    assert!(
        blocked <= ttl * 3 / 2,
        "blocked {blocked:?}, more than one TTL"
    );
    tokio::time::timeout(Duration::from_secs(2), wakes.next())
        .await
        .expect("wake")
        .expect("message");
}

#[tokio::test]
async fn the_lease_holder_is_visible() {
    let (scheduler, _store) = scheduler_with(&[]).await;
    let nobody = scheduler.lease().await.expect("lease");
    assert!(!nobody.held);
    let config = lease_config(Duration::from_secs(15));
    let lease = Lease::new(redis().await, config.clone());
    let held = lease.try_acquire(0).await.expect("redis").expect("taken");
    let info = lease.describe().await.expect("describe").expect("held");
    assert_eq!(info.holder, config.holder);
    assert_eq!(info.fence, held.fence);
    assert!(
        info.ttl_left_ms > 10_000 && info.ttl_left_ms <= 15_000,
        "{info:?}"
    );
}

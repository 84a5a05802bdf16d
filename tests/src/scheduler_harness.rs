//! A scheduler service (the domain, no enqueue loop) over a fresh database holding the given
//! repositories, for tests that call its API directly.

use std::sync::Arc;
use std::time::Duration;

use ferry_scheduler::enqueue::Triggers;
use ferry_scheduler::importers::ImporterPool;
use ferry_scheduler::inventory::new_repository;
use ferry_scheduler::lease::{Lease, LeaseConfig};
use ferry_scheduler::service::Scheduler;
use ferry_scheduler::store::SchedulerStore;
use ferry_shared::ids::RepositoryPath;

use crate::{fresh_database, redis_url, unique_suffix};

/// A scheduler over a fresh database where `paths` are registered (`default`), calling
/// `importers`, with its Redis keys (triggers, lease) under a prefix of its own.
pub async fn scheduler_with(
    paths: &[&str],
    importers: ImporterPool,
) -> (Scheduler, SchedulerStore) {
    let (scheduler, store, _) = scheduler_with_url(paths, importers).await;
    (scheduler, store)
}

/// [`scheduler_with`], and the database's URL, for tests that also read or change it by hand.
pub async fn scheduler_with_url(
    paths: &[&str],
    importers: ImporterPool,
) -> (Scheduler, SchedulerStore, String) {
    let (store, url) = registered_store("scheduler", paths).await;
    let prefix = format!("ferry-test-{}", unique_suffix());
    let (triggers, lease) = replica_keys(
        &prefix,
        &format!("test-holder-{prefix}"),
        Duration::from_secs(5),
    )
    .await;
    // The service reads the bucket only for an inventory, which these tests do not run.
    let storage =
        ferry_shared::storage::open(&format!("file://{}", std::env::temp_dir().display()))
            .expect("storage");
    let scheduler = Scheduler::new(
        store.clone(),
        storage,
        triggers,
        lease,
        Arc::new(importers),
        2,
    );
    (scheduler, store, url)
}

/// A replica's wake-up triggers and enqueue lease under the Redis key `prefix` that replicas
/// share; `holder` names the replica, `ttl` is the lease's.
pub async fn replica_keys(prefix: &str, holder: &str, ttl: Duration) -> (Triggers, Lease) {
    let redis = redis::aio::ConnectionManager::new(redis::Client::open(redis_url()).expect("url"))
        .await
        .expect("redis (run `make test`)");
    let triggers = Triggers::new(
        redis.clone(),
        prefix,
        format!("{prefix}:wake"),
        holder.to_owned(),
        Duration::from_secs(1),
    );
    let lease = Lease::new(
        redis,
        LeaseConfig {
            key: format!("{prefix}:lease"),
            fence_key: format!("{prefix}:fence"),
            ttl,
            holder: holder.to_owned(),
        },
    );
    (triggers, lease)
}

/// A fresh scheduler database (named after `label`) where `paths` are registered (`default`,
/// two project segments); the store and the database's URL.
pub async fn registered_store(label: &str, paths: &[&str]) -> (SchedulerStore, String) {
    let url = fresh_database(label).await;
    let store = SchedulerStore::connect(&url, 4).await.expect("connect");
    store.migrate().await.expect("migrate");
    let batch: Vec<_> = paths
        .iter()
        .map(|p| new_repository(&RepositoryPath::parse(p).expect("path"), 2))
        .collect();
    store.register(&batch).await.expect("register");
    (store, url)
}

//! Failover with real processes: two schedulers and three importers, real PostgreSQL and Redis.
//! The lease holder is killed with SIGKILL mid-migration: the other scheduler takes over within
//! two lease TTLs, every repository still ends `import_done`, and no step is started more often
//! than its retries allow.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use ferry_proto::scheduler::v1::scheduler_client::SchedulerClient;
use ferry_proto::scheduler::v1::{
    GetLeaseRequest, GetMigrationSummaryRequest, ListRepositoriesRequest,
    SetMigrationEnabledRequest, UpdateSettingsRequest,
};
use ferry_tests::processes::{Process, free_port};
use ferry_tests::{LayoutWriter, fresh_database, poll_until, redis_url, unique_suffix, wait_until};

const REPOSITORIES: usize = 60;
/// Long enough that a holder stalled by a loaded machine still renews in time (it renews every
/// third of it).
const LEASE_TTL: Duration = Duration::from_secs(4);

/// Waits up to `within` until the replica serving on `port` holds the lease with a fencing
/// token above `fence`; returns the lease as it reported it.
async fn wait_for_takeover(
    what: &str,
    client: &mut SchedulerClient<ferry_shared::grpc::client::Connection>,
    port: u16,
    fence: u64,
    within: Duration,
) -> ferry_proto::scheduler::v1::LeaseStatus {
    wait_until(what, within, async || {
        let now = client
            .get_lease(GetLeaseRequest {})
            .await
            .expect("lease")
            .into_inner();
        if now.held && now.fence > fence && now.holder.ends_with(&format!(":{port}")) {
            Ok(now)
        } else {
            Err(now)
        }
    })
    .await
}

async fn connect(url: &str) -> SchedulerClient<ferry_shared::grpc::client::Connection> {
    ferry_tests::processes::connect_scheduler(url).await
}

/// `(repository, import type)` → how many starts the importers accepted, from their JSON logs.
/// Steps `importer` accepted and has not ended, per its JSON log: running now, or, after a
/// kill, cut off.
fn cut_off_steps(importer: &Process) -> Vec<String> {
    let mut open: HashMap<(String, String), i32> = HashMap::new();
    for line in importer.log_text().lines() {
        let Ok(event) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let delta = match event["message"].as_str() {
            Some("import step accepted") => 1,
            Some("import step ended") => -1,
            _ => continue,
        };
        let key = (
            event["repository"].as_str().unwrap_or_default().to_owned(),
            event["import_type"].as_str().unwrap_or_default().to_owned(),
        );
        *open.entry(key).or_default() += delta;
    }
    open.into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|((path, _), _)| path)
        .collect()
}

fn accepted_starts(importers: &[&Process]) -> HashMap<(String, String), u32> {
    let mut starts = HashMap::new();
    for importer in importers {
        for line in importer
            .log_text()
            .lines()
            .filter(|l| l.contains("import step accepted"))
        {
            let event: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{}: not a JSON log line ({e}): {line}", importer.name));
            let key = (
                event["repository"].as_str().expect("repository").to_owned(),
                event["import_type"].as_str().expect("type").to_owned(),
            );
            *starts.entry(key).or_default() += 1;
        }
    }
    starts
}

/// Two schedulers and three importers as processes over one bucket of repositories,
/// inventoried, with the migration switched on at capacity 2.
struct Deployment {
    _bucket: tempfile::TempDir,
    _logs: tempfile::TempDir,
    importers: Vec<Option<Process>>,
    schedulers: Vec<Option<Process>>,
    scheduler_ports: Vec<u16>,
    scheduler_urls: Vec<String>,
    repositories: usize,
    prefix: String,
    /// The importers' metadata database.
    metadata: String,
}

impl Deployment {
    async fn start() -> Self {
        Self::start_with(REPOSITORIES, 1).await
    }

    /// Waits up to two seconds until PostgreSQL runs no statement from the sessions named
    /// `application`; false if one still runs (it may wait on a lock the frozen process holds).
    async fn sessions_settled(metadata: &sqlx::PgPool, application: &str) -> bool {
        let within = Duration::from_secs(2);
        let settled = poll_until(within, Duration::from_millis(20), async || {
            let running: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE application_name = $1 AND state = 'active'",
            )
            .bind(application)
            .fetch_one(metadata)
            .await
            .expect("sessions");
            if running == 0 { Ok(()) } else { Err(running) }
        })
        .await;
        settled.is_ok()
    }

    /// Which of `paths` the metadata database shows in a step: pre-import or final import in
    /// progress.
    async fn in_progress(metadata: &sqlx::PgPool, paths: &[String]) -> Vec<String> {
        sqlx::query_scalar(
            "SELECT path FROM repositories WHERE path = ANY($1) \
             AND migration_status IN ('pre_import_in_progress', 'import_in_progress') ORDER BY path",
        )
        .bind(paths)
        .fetch_all(metadata)
        .await
        .expect("repositories in progress")
    }

    /// Like [`Self::start`], with `repositories` repositories of `tags` distinct images each
    /// (more tags, longer steps).
    async fn start_with(repositories: usize, tags: usize) -> Self {
        let deployment = Self::start_shaped(repositories, tags, true).await;
        deployment.enable(2).await;
        deployment
    }

    /// The deployment, not yet switched on; with `notify` false, importers send their step
    /// results to a port where nobody listens (every notification is lost).
    async fn start_shaped(repositories: usize, tags: usize, notify: bool) -> Self {
        let bucket = tempfile::tempdir().expect("tempdir");
        let logs = tempfile::tempdir().expect("logs");
        LayoutWriter::new(bucket.path()).registry("load", repositories, tags);
        let storage = format!("file://{}", bucket.path().display());
        let database = fresh_database("failover").await;
        let metadata = fresh_database("failover_meta").await;
        let scheduler_ports = vec![free_port(), free_port()];
        let scheduler_urls: Vec<String> = scheduler_ports
            .iter()
            .map(|p| format!("http://127.0.0.1:{p}"))
            .collect();
        let mut importers = Vec::new();
        let mut importer_urls = Vec::new();
        for i in 0..3 {
            let env = [
                // Named, so that a test can tell its PostgreSQL sessions from the others'.
                (
                    "FERRY_METADATA_DATABASE_URL",
                    format!("{metadata}?application_name=importer-{i}"),
                ),
                ("FERRY_STORAGE_URL", storage.clone()),
                (
                    "FERRY_SCHEDULER_URL",
                    if notify {
                        scheduler_urls.join(",")
                    } else {
                        "http://127.0.0.1:1".to_owned()
                    },
                ),
                ("FERRY_CANCEL_POLL_MS", "200".to_owned()),
            ];
            let importer = Process::start(
                "ferry-importer",
                &format!("importer-{i}"),
                free_port(),
                &env,
                logs.path(),
            );
            importer_urls.push(importer.url.clone());
            importers.push(Some(importer));
        }
        let prefix = format!("ferry-failover-{}", unique_suffix());
        let schedulers = scheduler_ports
            .iter()
            .enumerate()
            .map(|(i, port)| {
                let env = [
                    ("FERRY_DATABASE_URL", database.clone()),
                    ("FERRY_REDIS_URL", redis_url()),
                    ("FERRY_STORAGE_URL", storage.clone()),
                    ("FERRY_IMPORTERS", importer_urls.join(",")),
                    ("FERRY_REDIS_PREFIX", prefix.clone()),
                    ("FERRY_LEASE_TTL_SECS", LEASE_TTL.as_secs().to_string()),
                    ("FERRY_ENQUEUE_INTERVAL_MS", "200".to_owned()),
                    ("FERRY_GUARD_INTERVAL_SECS", "1".to_owned()),
                ];
                Some(Process::start(
                    "ferry-scheduler",
                    &format!("scheduler-{i}"),
                    *port,
                    &env,
                    logs.path(),
                ))
            })
            .collect();
        let deployment = Self {
            _bucket: bucket,
            _logs: logs,
            importers,
            schedulers,
            scheduler_ports,
            scheduler_urls,
            repositories,
            prefix: prefix.clone(),
            metadata,
        };
        let mut client = connect(&deployment.scheduler_urls[0]).await;
        connect(&deployment.scheduler_urls[1]).await;
        let settings = UpdateSettingsRequest {
            max_step_duration_secs: Some(2),
            ..Default::default()
        };
        client.update_settings(settings).await.expect("settings");
        ferry_tests::run_inventory(&mut client).await;
        deployment
    }

    /// Switches the migration on at `capacity`.
    async fn enable(&self, capacity: u32) {
        let mut client = connect(&self.scheduler_urls[0]).await;
        let request = SetMigrationEnabledRequest {
            enabled: true,
            capacity: Some(capacity),
        };
        client.set_migration_enabled(request).await.expect("enable");
    }

    /// Waits until at least `count` repositories are done, asking scheduler `index`.
    async fn wait_done(&self, index: usize, count: u64, timeout: Duration) {
        let mut client = connect(&self.scheduler_urls[index]).await;
        let what = format!("{count} repositories done");
        wait_until(&what, timeout, async || {
            let summary = client
                .get_migration_summary(GetMigrationSummaryRequest {})
                .await
                .expect("summary")
                .into_inner();
            if ferry_tests::state_count(&summary, "import_done") >= count {
                Ok(())
            } else {
                Err(summary.states)
            }
        })
        .await;
    }

    /// Which scheduler holds the lease now, and the lease.
    async fn holder(&self, ask: usize) -> (usize, ferry_proto::scheduler::v1::LeaseStatus) {
        let mut client = connect(&self.scheduler_urls[ask]).await;
        let lease = client
            .get_lease(GetLeaseRequest {})
            .await
            .expect("lease")
            .into_inner();
        assert!(lease.held, "{lease:?}");
        let holder = self
            .scheduler_ports
            .iter()
            .position(|p| lease.holder.ends_with(&format!(":{p}")))
            .expect("the holder is one of ours");
        (holder, lease)
    }

    /// Every repository is done, and no step started more often than its retries allow.
    async fn check_all_done_once(&self, ask: usize) -> Vec<ferry_proto::scheduler::v1::Repository> {
        let mut client = connect(&self.scheduler_urls[ask]).await;
        let listing = ListRepositoriesRequest {
            state: String::new(),
            limit: 1000,
            after: String::new(),
        };
        let repositories = client
            .list_repositories(listing)
            .await
            .expect("list")
            .into_inner()
            .repositories;
        assert_eq!(repositories.len(), self.repositories);
        let importers: Vec<&Process> = self.importers.iter().flatten().collect();
        let starts = accepted_starts(&importers);
        for repository in &repositories {
            assert_eq!(
                repository.migration_state.as_str(),
                "import_done",
                "{}",
                repository.path
            );
            for import_type in ["Pre", "Final"] {
                let count = starts
                    .get(&(repository.path.clone(), import_type.to_owned()))
                    .copied()
                    .unwrap_or(0);
                let allowed = 1 + u32::try_from(repository.retries_count).unwrap_or(0);
                assert!(
                    count <= allowed,
                    "{} {import_type} started {count} times with {} retries",
                    repository.path,
                    repository.retries_count
                );
            }
        }
        repositories
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_lease_holder_loses_nothing_and_starts_nothing_twice() {
    let mut deployment = Deployment::start().await;
    deployment.wait_done(0, 10, Duration::from_secs(60)).await;
    let (holder, lease) = deployment.holder(0).await;
    let survivor = 1 - holder;
    deployment.schedulers[holder]
        .as_ref()
        .expect("running")
        .signal("KILL");
    let killed_at = Instant::now();
    deployment.schedulers[holder] = None;

    // The survivor takes the lease, with a higher fencing token, within two TTLs.
    let mut client = connect(&deployment.scheduler_urls[survivor]).await;
    let survivor_port = deployment.scheduler_ports[survivor];
    wait_for_takeover(
        "a takeover within two TTLs",
        &mut client,
        survivor_port,
        lease.fence,
        (LEASE_TTL * 2).saturating_sub(killed_at.elapsed()),
    )
    .await;
    let took_over = killed_at.elapsed();
    deployment
        .wait_done(
            survivor,
            deployment.repositories as u64,
            Duration::from_secs(120),
        )
        .await;
    deployment.check_all_done_once(survivor).await;
    eprintln!("failover: takeover {took_over:?} after SIGKILL of the holder");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_importer_killed_mid_import_is_unlocked_and_its_steps_retried_elsewhere() {
    // Forty images a repository: each step reads forty manifests and copies eighty blobs, long
    // enough to catch one running.
    let mut deployment = Deployment::start_with(20, 40).await;
    deployment.wait_done(0, 3, Duration::from_secs(60)).await;
    // An importer whose log shows a step it accepted and has not ended is frozen, so its log
    // and its database writes stop where they are. It is killed only if one of those steps is
    // still in progress in the metadata database once PostgreSQL has run all it sent; otherwise
    // it is thawed and the search goes on.
    let metadata = sqlx::PgPool::connect(&deployment.metadata)
        .await
        .expect("metadata database");
    let mut tries = 0;
    let (victim, orphans) = wait_until(
        "a step caught in progress",
        Duration::from_secs(120),
        async || {
            // Each try starts the search at the next importer, so one that keeps failing the
            // checks is not picked every time.
            tries += 1;
            let count = deployment.importers.len();
            let running = (0..count).map(|i| (tries + i) % count).find(|&i| {
                deployment.importers[i]
                    .as_ref()
                    .is_some_and(|importer| !cut_off_steps(importer).is_empty())
            });
            let Some(candidate) = running else {
                return Err(format!("no step running, {tries} tries"));
            };
            let importer = deployment.importers[candidate].as_mut().expect("running");
            importer.signal("STOP");
            // Once PostgreSQL has read and run every statement it sent (a commit included), its
            // writes are final; a moment lets its sessions read what is in their sockets.
            tokio::time::sleep(Duration::from_millis(50)).await;
            let settled = Deployment::sessions_settled(&metadata, &importer.name).await;
            let open = cut_off_steps(importer);
            let orphans = Deployment::in_progress(&metadata, &open).await;
            if !settled || orphans.is_empty() {
                importer.signal("CONT");
                return Err(format!(
                    "{}: settled {settled}, {} step(s) in progress, {tries} tries",
                    importer.name,
                    orphans.len()
                ));
            }
            // From here the guard may cancel the orphans on a live importer at any moment: that
            // is the repair under test, so their rows are not checked again here.
            importer.signal("KILL");
            importer.wait_exit(Duration::from_secs(10)).await;
            Ok((candidate, orphans))
        },
    )
    .await;
    let killed = deployment.importers[victim].take().expect("the victim");
    deployment
        .wait_done(0, deployment.repositories as u64, Duration::from_secs(180))
        .await;
    let repositories = deployment.check_all_done_once(0).await;
    for orphan in &orphans {
        let repository = repositories
            .iter()
            .find(|r| &r.path == orphan)
            .expect("listed");
        assert!(
            repository.retries_count >= 1,
            "{orphan} was aborted by the guard and retried"
        );
    }
    eprintln!(
        "importer killed with {} step(s) cut off; all retried elsewhere and done",
        orphans.len()
    );
    drop(killed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_holder_stops_dispatching_when_it_resumes() {
    let deployment = Deployment::start().await;
    deployment.wait_done(0, 5, Duration::from_secs(60)).await;
    let (holder, lease) = deployment.holder(0).await;
    let other = 1 - holder;
    let paused = deployment.schedulers[holder].as_ref().expect("running");
    paused.signal("STOP");
    // Past its TTL, the other replica takes over with a higher fencing token.
    let paused_at = Instant::now();
    let mut client = connect(&deployment.scheduler_urls[other]).await;
    let other_port = deployment.scheduler_ports[other];
    // Between the expiry and the takeover nobody holds it: keep asking.
    let taken = wait_for_takeover(
        "a takeover while the holder was paused",
        &mut client,
        other_port,
        lease.fence,
        (LEASE_TTL * 3).saturating_sub(paused_at.elapsed()),
    )
    .await;
    paused.signal("CONT");
    // The resumed holder finds its lease expired and stops dispatching; the other finishes.
    deployment
        .wait_done(
            other,
            deployment.repositories as u64,
            Duration::from_secs(120),
        )
        .await;
    deployment.check_all_done_once(other).await;
    let (final_holder, final_lease) = deployment.holder(other).await;
    assert_eq!(
        (final_holder, final_lease.fence),
        (other, taken.fence),
        "the resumed replica did not take the lease back"
    );
    let log = paused.log_text();
    assert!(
        log.contains("stopped dispatching"),
        "the resumed holder noticed its lease was gone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guard_heals_every_dropped_notification() {
    let deployment = Deployment::start_shaped(12, 1, false).await;
    let mut client = connect(&deployment.scheduler_urls[0]).await;
    let quick = UpdateSettingsRequest {
        max_step_duration_secs: Some(1),
        ..Default::default()
    };
    client.update_settings(quick).await.expect("settings");
    deployment.enable(6).await;
    // No step result ever reaches a scheduler: only the guard moves repositories on.
    deployment
        .wait_done(0, deployment.repositories as u64, Duration::from_secs(120))
        .await;
    deployment.check_all_done_once(1).await;
    for scheduler in deployment.schedulers.iter().flatten() {
        assert!(
            !scheduler.log_text().contains("import result applied"),
            "{} got a notification",
            scheduler.name
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orphaned_dedup_key_blocks_nothing() {
    let deployment = Deployment::start_shaped(20, 1, true).await;
    // A run that set the pending-trigger key died without consuming it, and the key has no
    // expiry at all: the runbook's "stuck deduplication".
    let key = format!("{}:enqueuer:pending", deployment.prefix);
    let redis = redis::Client::open(redis_url()).expect("redis url");
    let mut connection = redis
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg("dead-run")
        .query_async(&mut connection)
        .await
        .expect("orphan");
    let started = Instant::now();
    deployment.enable(2).await;
    deployment.wait_done(0, 1, Duration::from_secs(10)).await;
    let first_done = started.elapsed();
    deployment
        .wait_done(0, deployment.repositories as u64, Duration::from_secs(120))
        .await;
    deployment.check_all_done_once(1).await;
    let ttl: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query_async(&mut connection)
        .await
        .expect("pttl");
    assert!(
        ttl != -1,
        "the key never keeps living without an expiry (PTTL {ttl})"
    );
    eprintln!("orphaned dedup key: first repository done after {first_done:?}, no human action");
}

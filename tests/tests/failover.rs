//! Failover with real processes: two schedulers and three importers, real PostgreSQL and Redis.
//! The lease holder is killed with SIGKILL mid-migration: the other scheduler takes over within
//! two lease TTLs, every repository still ends `import_done`, and no step is started more often
//! than its retries allow.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use ferry_proto::scheduler::v1::scheduler_client::SchedulerClient;
use ferry_proto::scheduler::v1::{
    GetLeaseRequest, GetMigrationSummaryRequest, ListRepositoriesRequest, RunInventoryRequest,
    SetMigrationEnabledRequest, UpdateSettingsRequest,
};
use ferry_tests::processes::{Process, free_port};
use ferry_tests::{LayoutWriter, fresh_database, redis_url, unique_suffix};

const REPOSITORIES: usize = 60;
const LEASE_TTL: Duration = Duration::from_secs(2);

async fn connect(url: &str) -> SchedulerClient<tonic::transport::Channel> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(mut client) = SchedulerClient::connect(url.to_owned()).await
            && client
                .get_migration_summary(GetMigrationSummaryRequest {})
                .await
                .is_ok()
        {
            return client;
        }
        assert!(
            Instant::now() < deadline,
            "scheduler at {url} did not come up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn done(client: &mut SchedulerClient<tonic::transport::Channel>) -> u64 {
    let summary = client
        .get_migration_summary(GetMigrationSummaryRequest {})
        .await
        .expect("summary")
        .into_inner();
    summary
        .states
        .iter()
        .filter(|s| s.state == "import_done")
        .map(|s| s.count)
        .sum()
}

/// `(repository, import type)` → how many starts the importers accepted, from their JSON logs.
fn accepted_starts(importers: &[Process]) -> HashMap<(String, String), u32> {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_lease_holder_loses_nothing_and_starts_nothing_twice() {
    let dir = tempfile::tempdir().expect("tempdir");
    let logs = tempfile::tempdir().expect("logs");
    let layout = LayoutWriter::new(dir.path());
    for i in 0..REPOSITORIES {
        layout.image(&format!("load/p{i:03}/app"), "v1", &format!("image {i}"));
    }
    let storage = format!("file://{}", dir.path().display());
    let database = fresh_database("failover").await;
    let metadata = fresh_database("failover_meta").await;
    let scheduler_ports = [free_port(), free_port()];
    let scheduler_urls: Vec<String> = scheduler_ports
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}"))
        .collect();

    let mut importers = Vec::new();
    let mut importer_urls = Vec::new();
    for i in 0..3 {
        let env = [
            ("FERRY_METADATA_DATABASE_URL", metadata.clone()),
            ("FERRY_STORAGE_URL", storage.clone()),
            ("FERRY_SCHEDULER_URL", scheduler_urls.join(",")),
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
        importers.push(importer);
    }
    let prefix = format!("ferry-failover-{}", unique_suffix());
    let mut schedulers: Vec<Option<Process>> = scheduler_ports
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
    let mut first = connect(&scheduler_urls[0]).await;
    connect(&scheduler_urls[1]).await;

    let settings = UpdateSettingsRequest {
        max_step_duration_secs: Some(2),
        ..Default::default()
    };
    first.update_settings(settings).await.expect("settings");
    let mut stream = first
        .run_inventory(RunInventoryRequest {})
        .await
        .expect("inventory")
        .into_inner();
    while stream.message().await.expect("progress").is_some() {}
    first
        .set_migration_enabled(SetMigrationEnabledRequest {
            enabled: true,
            capacity: Some(2),
        })
        .await
        .expect("enable");

    // Let the migration get going, then kill the lease holder outright.
    let deadline = Instant::now() + Duration::from_secs(60);
    while done(&mut first).await < 10 {
        assert!(Instant::now() < deadline, "the migration did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let lease = first
        .get_lease(GetLeaseRequest {})
        .await
        .expect("lease")
        .into_inner();
    assert!(lease.held, "{lease:?}");
    let holder = scheduler_ports
        .iter()
        .position(|p| lease.holder.ends_with(&format!(":{p}")))
        .expect("holder is one of ours");
    let survivor = 1 - holder;
    let done_at_kill = done(&mut first).await;
    schedulers[holder].as_ref().expect("running").signal("KILL");
    let killed_at = Instant::now();
    schedulers[holder] = None;

    // The survivor takes the lease, with a higher fencing token, within two TTLs.
    let mut client = connect(&scheduler_urls[survivor]).await;
    let took_over = loop {
        let now = client
            .get_lease(GetLeaseRequest {})
            .await
            .expect("lease")
            .into_inner();
        if now.held
            && now.fence > lease.fence
            && now
                .holder
                .ends_with(&format!(":{}", scheduler_ports[survivor]))
        {
            break killed_at.elapsed();
        }
        assert!(
            killed_at.elapsed() < LEASE_TTL * 2,
            "no takeover within two TTLs: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    // Everything still ends import_done.
    let deadline = Instant::now() + Duration::from_secs(120);
    while done(&mut client).await < REPOSITORIES as u64 {
        let summary = client
            .get_migration_summary(GetMigrationSummaryRequest {})
            .await
            .expect("summary")
            .into_inner();
        assert!(
            Instant::now() < deadline,
            "not all done after the failover: {:?}",
            summary.states
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // No step started more often than the repository's retries allow.
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
    assert_eq!(repositories.len(), REPOSITORIES);
    let starts = accepted_starts(&importers);
    for repository in &repositories {
        assert_eq!(
            repository.migration_state, "import_done",
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
    eprintln!(
        "failover: holder killed with {done_at_kill}/{REPOSITORIES} done; takeover after {took_over:?}"
    );
}

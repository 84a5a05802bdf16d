//! Figure e: the project repair scan's rate, in projects per second, against a real importer.
//!
//! Seeds `FERRY_BENCH_PROJECTS` projects (default 1,000,000; twice as many tagged repositories
//! in the registry, a known set missing on the scheduler side: see `ferry_tests::repair_seed`)
//! into real PostgreSQL, starts one scheduler and one importer in process over real gRPC, turns
//! the scan on with `FERRY_BENCH_REPAIR_WORKERS` workers (default 2, the setting's default), and
//! takes the pass's rate from its own record (`repair_passes`: first claim to last write). Each
//! run seeds afresh, so every pass finds the same work.

use std::time::{Duration, Instant};

use sqlx::PgPool;

use ferry_proto::scheduler::v1::{GetRepairStatusRequest, UpdateSettingsRequest};
use ferry_tests::Cluster;
use ferry_tests::repair_seed::{expectation, seed_registry, seed_scheduler, wrong_analyses};

use super::{Figure, median, runs};

/// One pass over `projects` freshly seeded projects; returns its rate in projects per second.
async fn one_pass(projects: i64, workers: u32) -> f64 {
    let bucket = tempfile::tempdir().expect("bucket");
    let cluster = Cluster::start(bucket.path(), 1).await;
    let db = PgPool::connect(&cluster.database_url).await.expect("db");
    let metadata = PgPool::connect(&cluster.metadata_database_url)
        .await
        .expect("metadata db");
    let seeding = Instant::now();
    seed_scheduler(&db, projects).await;
    seed_registry(&metadata, projects).await;
    let expected = expectation(projects);
    eprintln!(
        "e: seeded {projects} projects, {} registry repositories in {:.1} s",
        expected.registry_repositories,
        seeding.elapsed().as_secs_f64()
    );
    let mut client = cluster.client().await;
    let started = Instant::now();
    client
        .update_settings(UpdateSettingsRequest {
            repair_enabled: Some(true),
            repair_max_concurrency: Some(workers),
            ..UpdateSettingsRequest::default()
        })
        .await
        .expect("enable");
    let done = loop {
        let status = client
            .get_repair_status(GetRepairStatusRequest {})
            .await
            .expect("status")
            .into_inner();
        if !status.passes.is_empty() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(3600),
            "no pass: {status:?}"
        );
        // The status counts every repair row: polling it faster would slow the pass it times.
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let pass = &done.passes[0];
    let parse = |t: &str| chrono::DateTime::parse_from_rfc3339(t).expect("time");
    let seconds = (parse(&pass.finished_at) - parse(&pass.started_at)).as_seconds_f64();
    assert_eq!(pass.projects as i64, projects);
    assert_eq!(pass.missing as i64, expected.missing);
    assert!(wrong_analyses(&db, projects).await.is_empty());
    let rate = projects as f64 / seconds;
    eprintln!(
        "e: pass {seconds:.2} s = {rate:.0} projects/s, {} missing repositories found, all correct",
        pass.missing
    );
    rate
}

pub async fn repair_scan_rate() -> Figure {
    let projects: i64 = ferry_tests::env_size("FERRY_BENCH_PROJECTS", 1_000_000);
    let workers: u32 = ferry_tests::env_size("FERRY_BENCH_REPAIR_WORKERS", 2);
    let mut rates = Vec::new();
    for _ in 0..runs() {
        rates.push(one_pass(projects, workers).await);
    }
    let rate = median(rates);
    Figure {
        id: "e",
        name: format!("project repair scan, {projects} projects, {workers} workers"),
        ferry: format!("{rate:.0} projects/s"),
        reference: "—".into(),
        ratio: format!("{rate:.0} /s"),
        target: "≥ 10,000/s",
        met: rate >= 10_000.0,
    }
}

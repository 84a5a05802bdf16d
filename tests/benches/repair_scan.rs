//! `make bench`: the project repair scan's rate against a real importer.
//!
//! Seeds 200,000 projects (400,000 tagged repositories in the registry, a known set missing on
//! the scheduler side: see `ferry_tests::repair_seed`) into real PostgreSQL, starts one
//! scheduler and one importer in process over real gRPC, turns the scan on with its default 2
//! workers, and reports the pass's rate from its own record (`repair_passes`: first claim to
//! last write). Target: at least 10,000 projects/s on 2 cores. `FERRY_BENCH_PROJECTS` and
//! `FERRY_BENCH_REPAIR_WORKERS` change the sizes.

use std::time::{Duration, Instant};

use sqlx::PgPool;

use ferry_proto::scheduler::v1::{GetRepairStatusRequest, UpdateSettingsRequest};
use ferry_tests::Cluster;
use ferry_tests::repair_seed::{expectation, seed_registry, seed_scheduler, wrong_analyses};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let projects: i64 = ferry_tests::env_size("FERRY_BENCH_PROJECTS", 200_000);
    let workers: u32 = ferry_tests::env_size("FERRY_BENCH_REPAIR_WORKERS", 2);
    let bucket = tempfile::tempdir().expect("bucket");
    let cluster = Cluster::start(bucket.path(), 1).await;
    let db = PgPool::connect(&cluster.database_url).await.expect("db");
    let metadata = PgPool::connect(&cluster.metadata_database_url)
        .await
        .expect("metadata db");
    let seeding = Instant::now();
    seed_scheduler(&db, projects).await;
    seed_registry(&metadata, projects).await;
    eprintln!(
        "seeded {projects} projects, {} registry repositories in {:.1} s",
        expectation(projects).registry_repositories,
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
            started.elapsed() < Duration::from_secs(1800),
            "no pass: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let wall = started.elapsed().as_secs_f64();
    let pass = &done.passes[0];
    let parse = |t: &str| chrono::DateTime::parse_from_rfc3339(t).expect("time");
    let seconds = (parse(&pass.finished_at) - parse(&pass.started_at)).as_seconds_f64();
    let expected = expectation(projects);
    assert_eq!(pass.projects as i64, projects);
    assert_eq!(pass.missing as i64, expected.missing);
    assert!(wrong_analyses(&db, projects).await.is_empty());
    println!(
        "repair scan: {projects} projects, {workers} workers: pass {seconds:.2} s = {:.0} projects/s \
         ({wall:.1} s from switching it on, which includes the wait for the next sweep); \
         {} missing repositories found, all correct",
        projects as f64 / seconds,
        pass.missing
    );
}

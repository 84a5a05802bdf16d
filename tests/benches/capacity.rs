//! `make bench`: how much of the capacity the scheduler keeps busy while there is ready work.
//!
//! Migrates a synthetic registry (200 repositories of 5 images each by default, local bucket)
//! through one scheduler and two importers, in process, over real gRPC, PostgreSQL and Redis.
//! Every 10 ms it samples the repositories in process (pre_importing, pre_import_done,
//! importing: the slots the capacity limits) and reports the time-weighted share of the capacity
//! in use while ready repositories were still waiting. Target: at least 95 %.

use std::time::{Duration, Instant};

use sqlx::{PgPool, Row};

use ferry_proto::scheduler::v1::SetMigrationEnabledRequest;
use ferry_tests::{Cluster, ClusterOptions, LayoutWriter, env_size};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // Repositories, images per repository and capacity.
    let repositories_n: usize = env_size("FERRY_BENCH_REPOSITORIES", 200);
    let tags_n: usize = env_size("FERRY_BENCH_TAGS", 5);
    let capacity: u32 = env_size("FERRY_BENCH_CAPACITY", 8);
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = LayoutWriter::new(dir.path());
    for i in 0..repositories_n {
        for t in 0..tags_n {
            layout.image(
                &format!("bench/p{i:04}/app"),
                &format!("v{t}"),
                &format!("bench {i}.{t}"),
            );
        }
    }
    // Two importers of 4 slots each: exactly the capacity, so idle slots are the scheduler's.
    let options = ClusterOptions {
        importers: 2,
        ..ClusterOptions::default()
    };
    let cluster = Cluster::start_with(format!("file://{}", dir.path().display()), options).await;
    let mut client = cluster.client().await;
    ferry_tests::run_inventory(&mut client).await;
    let db = PgPool::connect(&cluster.database_url)
        .await
        .expect("scheduler db");

    let started = Instant::now();
    client
        .set_migration_enabled(SetMigrationEnabledRequest {
            enabled: true,
            capacity: Some(capacity),
        })
        .await
        .expect("enable");
    let (mut busy_time, mut window, mut last) = (0.0_f64, 0.0_f64, Instant::now());
    let mut samples = 0;
    loop {
        let row = sqlx::query(
            "SELECT count(*) FILTER (WHERE migration_state IN ('pre_importing', 'pre_import_done', 'importing')) AS busy, \
                    count(*) FILTER (WHERE migration_state = 'default') AS ready, \
                    count(*) FILTER (WHERE migration_state = 'import_done') AS done \
             FROM container_repositories",
        )
        .fetch_one(&db)
        .await
        .expect("sample");
        let (busy, ready, done): (i64, i64, i64) =
            (row.get("busy"), row.get("ready"), row.get("done"));
        let now = Instant::now();
        let dt = now.duration_since(last).as_secs_f64();
        last = now;
        // Measure while there is ready work waiting, from the first start on.
        if ready > 0 && (busy > 0 || done > 0) {
            busy_time += dt * busy.min(i64::from(capacity)) as f64 / f64::from(capacity);
            window += dt;
            samples += 1;
        }
        if done as usize == repositories_n {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(900),
            "the migration did not finish"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let phases = sqlx::query(
        "SELECT avg(EXTRACT(EPOCH FROM migration_pre_import_done_at - migration_pre_import_started_at))::float8 AS pre, \
                avg(EXTRACT(EPOCH FROM migration_import_started_at - migration_pre_import_done_at))::float8 AS wait_final, \
                avg(EXTRACT(EPOCH FROM migration_import_done_at - migration_import_started_at))::float8 AS fin \
         FROM container_repositories",
    )
    .fetch_one(&db)
    .await
    .expect("phases");
    let ms = |name: &str| 1000.0 * phases.get::<Option<f64>, _>(name).unwrap_or(0.0);
    let utilization = 100.0 * busy_time / window.max(f64::EPSILON);
    println!(
        "capacity benchmark: {repositories_n} repositories × {tags_n} images, capacity {capacity}, 2 importers × 4 slots"
    );
    println!(
        "  migrated in          {elapsed:.1} s ({:.1} repositories/s)",
        repositories_n as f64 / elapsed
    );
    println!(
        "  measured window      {window:.1} s, {samples} samples every 10 ms while ready work waited"
    );
    println!("  capacity in use      {utilization:.1} % (target >= 95 %)");
    println!(
        "  per repository       pre-import {:.0} ms, wait for the final {:.0} ms, final import {:.0} ms",
        ms("pre"),
        ms("wait_final"),
        ms("fin")
    );
    if utilization < 95.0 {
        println!("  BELOW TARGET");
        std::process::exit(1);
    }
}

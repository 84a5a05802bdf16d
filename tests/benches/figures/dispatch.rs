//! Figure d: how much of the capacity the scheduler keeps busy with 3 importers, and how long a
//! ready step waits to be dispatched.
//!
//! A synthetic registry (`FERRY_BENCH_DISPATCH_REPOSITORIES` = 200 repositories of 5 images,
//! local bucket) migrates through one scheduler and three importers of 4 slots, in this process,
//! over real gRPC, PostgreSQL and Redis; the capacity equals the importers' slots, so an idle
//! slot is the scheduler's doing. Every 10 ms the repositories holding a slot (pre_importing,
//! pre_import_done, importing) are counted while ready ones wait: the time-weighted share of the
//! capacity in use. Dispatch latency: from a repository's pre-import done to its final import
//! claimed by an importer (`migration_step_accepted_at`: the importer's own time of its claim,
//! which `StartImport`'s answer carries), which needs no free capacity (the repository keeps its
//! slot), so it is the scheduler's own reaction time: notification, claim, and `StartImport`
//! until the importer runs the step. The answer's way back delays no step and is not counted.

use std::time::{Duration, Instant};

use sqlx::{PgPool, Row};

use ferry_proto::scheduler::v1::SetMigrationEnabledRequest;
use ferry_tests::{Cluster, ClusterOptions, LayoutWriter, env_size};

use super::{Figure, median, runs};

struct Run {
    busy: f64,
    p99_ms: f64,
    p50_ms: f64,
}

async fn run_once(repositories: usize, tags: usize, importers: usize, slots: usize) -> Run {
    let dir = tempfile::tempdir().expect("tempdir");
    LayoutWriter::new(dir.path()).registry("bench", repositories, tags);
    let capacity = u32::try_from(importers * slots).unwrap_or(12);
    let cluster = Cluster::start_with(
        format!("file://{}", dir.path().display()),
        ClusterOptions {
            importers,
            importer_slots: slots,
            ..ClusterOptions::default()
        },
    )
    .await;
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
        if busy > i64::from(capacity) {
            eprintln!("d: {busy} repositories in process, over the capacity of {capacity}");
        }
        if ready > 0 && (busy > 0 || done > 0) {
            busy_time += dt * busy.min(i64::from(capacity)) as f64 / f64::from(capacity);
            window += dt;
        }
        if done as usize == repositories {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(900),
            "the migration did not finish"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let latency = sqlx::query(
        "SELECT percentile_cont(0.99) WITHIN GROUP (ORDER BY w) AS p99, \
                percentile_cont(0.5) WITHIN GROUP (ORDER BY w) AS p50 \
         FROM (SELECT EXTRACT(EPOCH FROM migration_step_accepted_at - migration_pre_import_done_at)::float8 AS w \
               FROM container_repositories) waits",
    )
    .fetch_one(&db)
    .await
    .expect("latency");
    let ms = |name: &str| 1000.0 * latency.get::<Option<f64>, _>(name).unwrap_or(f64::NAN);
    Run {
        busy: busy_time / window.max(f64::EPSILON),
        p99_ms: ms("p99"),
        p50_ms: ms("p50"),
    }
}

pub async fn utilization_and_dispatch_latency() -> Figure {
    let repositories: usize = env_size("FERRY_BENCH_DISPATCH_REPOSITORIES", 200);
    let tags: usize = env_size("FERRY_BENCH_TAGS", 5);
    let importers: usize = env_size("FERRY_BENCH_IMPORTERS", 3);
    let slots: usize = env_size("FERRY_BENCH_IMPORTER_SLOTS", 4);
    let (mut busy, mut p99, mut p50) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..runs() {
        let measured = run_once(repositories, tags, importers, slots).await;
        eprintln!(
            "d: run {}: {:.1} % of the capacity busy, dispatch p50 {:.1} ms, p99 {:.1} ms",
            run + 1,
            measured.busy * 100.0,
            measured.p50_ms,
            measured.p99_ms
        );
        busy.push(measured.busy);
        p99.push(measured.p99_ms);
        p50.push(measured.p50_ms);
    }
    let (busy, p99, p50) = (median(busy), median(p99), median(p50));
    Figure {
        id: "d",
        name: format!(
            "capacity in use and dispatch latency, {importers} importers × {slots} slots ({repositories} repositories × {tags} images)"
        ),
        ferry: format!(
            "{:.1} % busy, dispatch p50 {p50:.1} ms, p99 {p99:.1} ms",
            busy * 100.0
        ),
        reference: format!("capacity {}", importers * slots),
        ratio: format!("{busy:.3} ×"),
        target: "≥ 95 % busy, p99 < 50 ms",
        met: busy >= 0.95 && p99 < 50.0,
    }
}

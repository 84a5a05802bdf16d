//! Figure h3: how deep a step is, what one importer does behind the scheduler, and how much of
//! a shared request budget importers use, on the emulator at 25 ms a request. The dataset is
//! h2's shape (`FERRY_BENCH_H3_REPOSITORIES` = 100 × 5 tags × 3 layers).
//!
//! - (a) Step depth: a release `ferry-importer import --path …` of the first
//!   `FERRY_BENCH_H3_DEPTH_REPOSITORIES` (20) repositories with `FERRY_MAX_CONCURRENT_IMPORTS=1`,
//!   so no step shares the importer with another, and its other settings at their defaults. The
//!   latency is the importer's own timer of each step (`duration_ms` of its `import step ended`
//!   log line: from the step's start after its claim to its commit), p50 over the pre-imports;
//!   divided by 25 ms it is the number of round trips in a row.
//! - (b) Throughput: a release `ferry-scheduler` and one release `ferry-importer` serving gRPC at
//!   its defaults (8 steps at once), the capacity set to those 8 slots. After an inventory (not
//!   timed), from switching the migration on to the last `import_done` (read off the scheduler's
//!   rows): repositories/s for pre-import + final import, and the requests made meanwhile.
//! - (c) Budget: see [`super::budget`].

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferry_proto::scheduler::v1::{GetMigrationSummaryRequest, SetMigrationEnabledRequest};
use ferry_tests::dataset::{DatasetSpec, generate};
use ferry_tests::processes::{connect_scheduler, free_port};
use ferry_tests::{env_size, fresh_database, poll_until, run_inventory, state_count};

use super::budget::{self, BudgetRun};
use super::{
    Counts, LATENCY, Service, ferry_command, imported, loaded_emulator, migrated_database,
    percentile, run, scheduler, step_durations,
};
use crate::{Figure, median, runs};

const BUCKET: &str = "ferry-bench-h3";

/// What (a) measured in one run.
struct Depth {
    pre_p50_ms: f64,
    final_p50_ms: f64,
    counts: Counts,
}

/// What (b) measured in one run.
struct Throughput {
    rate: f64,
    counts: Counts,
    pre_p50_ms: f64,
}

async fn depth(data: &std::path::Path, paths: &[String]) -> Depth {
    let emulator = loaded_emulator(BUCKET, data);
    let database = migrated_database("bench_h3a").await;
    let mut command = ferry_command("ferry-importer", &emulator, BUCKET);
    command
        .arg("import")
        .args(paths.iter().flat_map(|path| ["--path", path.as_str()]))
        .env("FERRY_METADATA_DATABASE_URL", &database)
        .env("FERRY_MAX_CONCURRENT_IMPORTS", "1")
        .env("FERRY_LOG", "warn,ferry_importer=info");
    emulator.reset_stats();
    let (_, stdout, stderr) = run(command).await;
    let snapshot = emulator.stats();
    assert_eq!(imported(&stdout), Some(paths.len()), "{stdout}");
    let (pre, last) = step_durations(&stderr);
    assert_eq!(
        (pre.len(), last.len()),
        (paths.len(), paths.len()),
        "a step's end is missing from the log"
    );
    Depth {
        pre_p50_ms: percentile(pre, 0.5),
        final_p50_ms: percentile(last, 0.5),
        counts: Counts::of(&snapshot),
    }
}

async fn throughput(data: &std::path::Path, repositories: usize, capacity: u32) -> Throughput {
    let emulator = loaded_emulator(BUCKET, data);
    let logs = tempfile::tempdir().expect("tempdir");
    let (scheduler_port, importer_port) = (free_port(), free_port());
    let mut command = ferry_command("ferry-importer", &emulator, BUCKET);
    command
        .env(
            "FERRY_METADATA_DATABASE_URL",
            fresh_database("bench_h3b").await,
        )
        .env(
            "FERRY_SCHEDULER_URL",
            format!("http://127.0.0.1:{scheduler_port}"),
        )
        .env("FERRY_LOG", "warn,ferry_importer=info");
    let importer = Service::start(command, importer_port, logs.path().join("importer.log"));
    let (scheduler, database) = scheduler(
        &emulator,
        BUCKET,
        &importer.url,
        scheduler_port,
        logs.path(),
    )
    .await;
    let mut client = connect_scheduler(&scheduler.url).await;
    let inventory = run_inventory(&mut client).await;
    assert_eq!(inventory.repositories_registered, repositories as u64);
    let db = sqlx::PgPool::connect(&database)
        .await
        .expect("scheduler database");
    emulator.reset_stats();
    let started = SystemTime::now();
    client
        .set_migration_enabled(SetMigrationEnabledRequest {
            enabled: true,
            capacity: Some(capacity),
        })
        .await
        .expect("switch the migration on");
    let settled = poll_until(
        Duration::from_secs(1800),
        Duration::from_millis(100),
        async || {
            let pending: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM container_repositories WHERE migration_state = ANY($1)",
            )
            .bind(&ferry_scheduler::state::MigrationState::PENDING[..])
            .fetch_one(&db)
            .await
            .expect("count");
            if pending == 0 { Ok(()) } else { Err(pending) }
        },
    )
    .await;
    if let Err(pending) = settled {
        panic!(
            "h3: {pending} repositories still pending after 30 minutes; importer log:\n{}",
            super::tail(&importer.log_text())
        );
    }
    let counts = Counts::of(&emulator.stats());
    let summary = client
        .get_migration_summary(GetMigrationSummaryRequest {})
        .await
        .expect("summary")
        .into_inner();
    assert_eq!(
        state_count(&summary, "import_done"),
        repositories as u64,
        "not every repository was imported: {summary:?}"
    );
    let end = crate::walk::last_import_done(&database).await;
    db.close().await;
    let start = started.duration_since(UNIX_EPOCH).expect("clock");
    let (pre, _) = step_durations(&importer.log_text());
    drop((scheduler, importer));
    Throughput {
        rate: repositories as f64 / (end - start.as_secs_f64()),
        counts,
        pre_p50_ms: percentile(pre, 0.5),
    }
}

pub async fn steps_and_throughput() -> Figure {
    let repositories: usize = env_size("FERRY_BENCH_H3_REPOSITORIES", 100);
    let depth_repositories: usize =
        env_size("FERRY_BENCH_H3_DEPTH_REPOSITORIES", 20).min(repositories);
    let capacity: u32 = env_size("FERRY_BENCH_H3_CAPACITY", 8);
    let data = tempfile::tempdir().expect("tempdir");
    let spec = DatasetSpec {
        repositories,
        ..DatasetSpec::default()
    };
    generate(data.path(), &spec);
    let paths: Vec<String> = (0..depth_repositories)
        .map(|r| format!("bench/g{:02}/p{r:05}/app", r % 50))
        .collect();
    let budget_data = budget::dataset();
    let (mut depths, mut throughputs, mut budgets) = (Vec::new(), Vec::new(), Vec::new());
    for run_number in 0..runs() {
        let d = depth(data.path(), &paths).await;
        eprintln!(
            "h3a: run {}: pre-import p50 {:.0} ms ({:.1} round trips), final import p50 {:.0} ms; requests a repository (pre + final): {:.1} ({})",
            run_number + 1,
            d.pre_p50_ms,
            d.pre_p50_ms / LATENCY.as_millis() as f64,
            d.final_p50_ms,
            d.counts.total() / paths.len() as f64,
            d.counts.breakdown(paths.len() as f64),
        );
        let t = throughput(data.path(), repositories, capacity).await;
        eprintln!(
            "h3b: run {}: {:.1} repositories/s, pre-import p50 {:.0} ms at {capacity} at once; requests a repository: {:.1} ({})",
            run_number + 1,
            t.rate,
            t.pre_p50_ms,
            t.counts.total() / repositories as f64,
            t.counts.breakdown(repositories as f64),
        );
        let b = budget::share_used(&budget_data).await;
        eprintln!("h3c: run {}: {}", run_number + 1, b.describe());
        depths.push(d);
        throughputs.push(t);
        budgets.push(b);
    }
    let pre = median(depths.iter().map(|d| d.pre_p50_ms).collect());
    let last = median(depths.iter().map(|d| d.final_p50_ms).collect());
    let rate = median(throughputs.iter().map(|t| t.rate).collect());
    let counts = Counts::median(&throughputs.iter().map(|t| t.counts).collect::<Vec<_>>());
    let budget = BudgetRun::median(&budgets);
    let round_trip = LATENCY.as_millis() as f64;
    let n = repositories as f64;
    Figure {
        id: "h3",
        name: format!(
            "step depth and throughput, GCS emulator at {} ms ({repositories} repositories × {} tags × {} layers; budget: {})",
            LATENCY.as_millis(),
            spec.tags,
            spec.layers,
            budget.shape(),
        ),
        ferry: format!(
            "(a) pre-import p50 {pre:.0} ms = {:.1} round trips (final {last:.0} ms), one at a time; \
             (b) one importer at defaults behind the scheduler: {rate:.1} repositories/s, {:.1} requests a repository ({}); \
             (c) {}",
            pre / round_trip,
            counts.total() / n,
            counts.breakdown(n),
            budget.summary(),
        ),
        reference: "—".into(),
        ratio: format!(
            "(a) {:.2} × 150 ms, (b) {:.2} × 20/s, (c) {:.2} × 90 %",
            pre / 150.0,
            rate / 20.0,
            budget.binding_share() / 0.9
        ),
        target: "(a) p50 ≤ 150 ms, (b) ≥ 20 repositories/s, (c) ≥ 90 % of the budget used",
        met: pre <= 150.0 && rate >= 20.0 && budget.binding_share() >= 0.9,
    }
}

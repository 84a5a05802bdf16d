//! Figure g: the share of a storage request budget used, against fake-gcs-server behind a rate
//! limit (tests/src/throttle.rs answers 429 past the budget, reads and writes apart). Two
//! one-shot importers, eight repositories at once each, draw from one shared budget set to the
//! bucket's rate. Used: forwarded reads per second over the busy seconds (the first and the
//! last second left out) against the rate; refused: 429s among all requests.

use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;

use ferry_tests::buckets::GcsBucket;
use ferry_tests::dataset::{DatasetSpec, generate};
use ferry_tests::processes::governed_one_shot;
use ferry_tests::throttle::ThrottleProxy;
use ferry_tests::{env_size, fresh_database, unique_suffix};

use super::{Figure, median, release_bin, runs};

pub async fn share_of_budget_used() -> Figure {
    let rate: usize = env_size("FERRY_BENCH_BUDGET", 100);
    let repositories: usize = env_size("FERRY_BENCH_BUDGET_REPOSITORIES", 100);
    let data = tempfile::tempdir().expect("tempdir");
    let spec = DatasetSpec {
        repositories,
        tags: 2,
        layers: 2,
        shared_layers: 1,
        base_pool: 10,
        layer_bytes: 1024,
        seed: 3,
    };
    generate(data.path(), &spec);
    let paths: Vec<String> = (0..repositories)
        .map(|r| format!("bench/g{:02}/p{r:05}/app", r % 50))
        .collect();
    let (mut used, mut refused_shares, mut seconds) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..runs() {
        let bucket = GcsBucket::new().await;
        bucket.upload_dir(data.path()).await;
        let proxy =
            ThrottleProxy::start(bucket.endpoint(), rate as f64, (rate as f64 / 4.0).max(1.0))
                .await;
        let database = fresh_database("bench_g").await;
        let migrated = Command::new(release_bin("ferry-importer"))
            .arg("migrate")
            .env("FERRY_METADATA_DATABASE_URL", &database)
            .stdout(Stdio::null())
            .status()
            .expect("migrate");
        assert!(migrated.success());
        let prefix = format!("ferry-bench-{}", unique_suffix());
        let started = std::time::Instant::now();
        let importers: Vec<_> = paths
            .chunks(paths.len().div_ceil(2))
            .map(|half| {
                governed_one_shot(
                    &release_bin("ferry-importer"),
                    half,
                    &proxy.address.to_string(),
                    bucket.name(),
                    &database,
                    &prefix,
                    rate as f64,
                )
                .env("FERRY_MAX_CONCURRENT_IMPORTS", "8")
                .env("FERRY_LOG", "warn")
                .stdout(Stdio::null())
                .spawn()
                .expect("ferry-importer runs")
            })
            .collect();
        for mut importer in importers {
            assert!(importer.wait().expect("wait").success(), "an import failed");
        }
        let elapsed = started.elapsed().as_secs_f64();
        let per_second = proxy
            .counts
            .reads_per_second
            .lock()
            .expect("counts")
            .clone();
        let busy: Vec<u64> = per_second.iter().copied().skip_while(|&n| n == 0).collect();
        let busy = &busy[1.min(busy.len())..busy.len().saturating_sub(1)];
        let share = busy.iter().sum::<u64>() as f64 / (busy.len().max(1) * rate) as f64;
        let refused = proxy.counts.refused.load(Ordering::Relaxed) as f64;
        let all = refused + proxy.counts.forwarded.load(Ordering::Relaxed) as f64;
        eprintln!(
            "g: run {}: {:.1} % of {rate} reads/s used over {} busy seconds, {:.2} % refused ({refused} of {all}), {elapsed:.1} s",
            run + 1,
            share * 100.0,
            busy.len(),
            refused / all * 100.0
        );
        used.push(share);
        refused_shares.push(refused / all);
        seconds.push(elapsed);
    }
    let (used, refused) = (median(used), median(refused_shares));
    Figure {
        id: "g",
        name: format!(
            "storage budget used: 2 importers, fake-gcs-server limited to {rate} reads/s and {rate} writes/s"
        ),
        ferry: format!(
            "{:.1} % used, {:.2} % refused",
            used * 100.0,
            refused * 100.0
        ),
        reference: format!("budget {rate} reads/s"),
        ratio: format!("{:.2} ×", used),
        target: "≥ 90 % used, < 1 % 429",
        met: used >= 0.9 && refused < 0.01,
    }
}

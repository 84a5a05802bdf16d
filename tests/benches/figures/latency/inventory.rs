//! Figure h1: the scheduler's inventory of `FERRY_BENCH_INVENTORY_REPOSITORIES` (20,000)
//! repositories on the emulator at 25 ms a request.
//!
//! The bucket holds, for each repository `bench/gNN/pNNNNN/app` (50 groups, as in the dataset),
//! only what the walk looks at: a tag's `current` link and one `_layers/` link, put directly
//! into the emulator. A release `ferry-scheduler` (fresh database, no importer behind it) runs
//! one inventory (`RunInventory`, what `ferryctl inventory` calls) to its end. Timed: the call,
//! from the request to the last progress report. Counted: the emulator's requests during it.

use std::time::Instant;

use ferry_tests::gcs_emulator::{GcsEmulator, RequestKind};
use ferry_tests::processes::{connect_scheduler, free_port};
use ferry_tests::{env_size, run_inventory};

use super::{Counts, LATENCY, scheduler};
use crate::{Figure, median, runs};

const BUCKET: &str = "ferry-bench-h1";

/// The old layout's minimum for `repositories` repositories, put straight into `emulator`.
fn load(emulator: &GcsEmulator, repositories: usize) {
    emulator.create_bucket(BUCKET).expect("create the bucket");
    for r in 0..repositories {
        let root = format!(
            "docker/registry/v2/repositories/bench/g{:02}/p{r:05}/app",
            r % 50
        );
        let digest = format!("sha256:{r:064x}");
        let hex = &digest[7..];
        emulator.put_object(
            BUCKET,
            &format!("{root}/_manifests/tags/v1/current/link"),
            digest.clone(),
        );
        emulator.put_object(
            BUCKET,
            &format!("{root}/_layers/sha256/{hex}/link"),
            digest.clone(),
        );
    }
}

pub async fn inventory_rate() -> Figure {
    let repositories: usize = env_size("FERRY_BENCH_INVENTORY_REPOSITORIES", 20_000);
    let emulator = GcsEmulator::start(LATENCY);
    load(&emulator, repositories);
    let logs = tempfile::tempdir().expect("tempdir");
    let (mut rates, mut counts) = (Vec::new(), Vec::new());
    for run in 0..runs() {
        let port = free_port();
        let (scheduler, _database) =
            scheduler(&emulator, BUCKET, "http://127.0.0.1:1", port, logs.path()).await;
        let mut client = connect_scheduler(&scheduler.url).await;
        emulator.reset_stats();
        let started = Instant::now();
        let progress = run_inventory(&mut client).await;
        let elapsed = started.elapsed().as_secs_f64();
        let stats = emulator.stats();
        assert_eq!(
            progress.repositories_registered, repositories as u64,
            "the inventory registered {} of {repositories} repositories",
            progress.repositories_registered
        );
        let count = Counts::of(&stats);
        eprintln!(
            "h1: run {}: {repositories} repositories in {elapsed:.2} s ({:.0}/s; its own report: {} ms, {} list calls); requests: {} ({} at most in flight)",
            run + 1,
            repositories as f64 / elapsed,
            progress.elapsed_ms,
            progress.list_calls,
            count.breakdown(1.0),
            stats.peak_in_flight,
        );
        rates.push(repositories as f64 / elapsed);
        counts.push(count);
        drop(scheduler);
    }
    let rate = median(rates);
    let count = Counts::median(&counts);
    let n = repositories as f64;
    Figure {
        id: "h1",
        name: format!(
            "scheduler inventory, GCS emulator at {} ms a request ({repositories} repositories)",
            LATENCY.as_millis()
        ),
        ferry: format!(
            "{rate:.0} repositories/s, {:.2} listings a repository ({:.0} requests: {})",
            count.get(RequestKind::List) / n,
            count.total(),
            count.breakdown(1.0)
        ),
        reference: "—".into(),
        ratio: format!("{:.2} ×", rate / 1000.0),
        target: "≥ 1,000 repositories/s",
        met: rate >= 1000.0,
    }
}

//! Figure h2: storage requests per repository of a one-shot import on the emulator at 25 ms a
//! request.
//!
//! The dataset (`FERRY_BENCH_H2_REPOSITORIES` = 100 repositories × 5 tags × 3 layers, the
//! default shape: one layer of three from a shared pool of 20, every fifth tag an OCI index of
//! two images) is loaded into a fresh bucket, the counters are zeroed, and a release
//! `ferry-importer import --all` at its defaults (a fresh, migrated metadata database) imports
//! it: the walk, then each repository's pre-import and final import. Every request it makes
//! is counted by kind and divided by the repositories; its wall time gives repositories/s.
//! The target is the steps' (a pre-import plus a final import): the listings of the walk that
//! found the repositories (figure h1's work) are counted apart, by walking the same bucket again
//! in this process with the same `ParallelWalk`, and taken off.

use ferry_tests::dataset::{DatasetSpec, generate};
use ferry_tests::env_size;

use super::{Counts, LATENCY, ferry_command, imported, loaded_emulator, migrated_database, run};
use crate::{Figure, median, runs};

pub async fn requests_per_repository() -> Figure {
    let repositories: usize = env_size("FERRY_BENCH_H2_REPOSITORIES", 100);
    let data = tempfile::tempdir().expect("tempdir");
    let spec = DatasetSpec {
        repositories,
        ..DatasetSpec::default()
    };
    let stats = generate(data.path(), &spec);
    let (mut counts, mut walks, mut seconds) = (Vec::new(), Vec::new(), Vec::new());
    for run_number in 0..runs() {
        let bucket = "ferry-bench-h2";
        let emulator = loaded_emulator(bucket, data.path());
        let database = migrated_database("bench_h2").await;
        let mut command = ferry_command("ferry-importer", &emulator, bucket);
        command
            .args(["import", "--all"])
            .env("FERRY_METADATA_DATABASE_URL", &database);
        emulator.reset_stats();
        let (elapsed, stdout, _) = run(command).await;
        let snapshot = emulator.stats();
        assert_eq!(
            imported(&stdout),
            Some(repositories),
            "the import did not import every repository:\n{stdout}"
        );
        let count = Counts::of(&snapshot);
        eprintln!(
            "h2: run {}: {:.1} requests a repository ({}), {:.2} s = {:.1} repositories/s, {} at most in flight",
            run_number + 1,
            count.total() / repositories as f64,
            count.breakdown(repositories as f64),
            elapsed.as_secs_f64(),
            repositories as f64 / elapsed.as_secs_f64(),
            snapshot.peak_in_flight,
        );
        emulator.reset_stats();
        let store =
            ferry_shared::storage::GcsStore::with_endpoint(bucket, "", &emulator.endpoint())
                .expect("store");
        let walked = walk_listings(&store).await;
        assert_eq!(
            walked,
            emulator.stats().total,
            "the walk makes only listings"
        );
        eprintln!(
            "h2: run {}: of which the walk: {:.2} listings a repository",
            run_number + 1,
            walked as f64 / repositories as f64
        );
        counts.push(count);
        walks.push(walked as f64);
        seconds.push(elapsed.as_secs_f64());
    }
    let count = Counts::median(&counts);
    let n = repositories as f64;
    let walk = median(walks) / n;
    let per_repository = count.total() / n;
    let steps = per_repository - walk;
    let elapsed = median(seconds);
    Figure {
        id: "h2",
        name: format!(
            "requests per repository, one-shot import --all at defaults, GCS emulator at {} ms ({repositories} repositories × {} tags × {} layers, {} manifests, {} blobs)",
            LATENCY.as_millis(),
            spec.tags,
            spec.layers,
            stats.manifests,
            stats.blobs,
        ),
        ferry: format!(
            "{steps:.1} requests a repository for its pre-import and final import, {per_repository:.1} with the walk's {walk:.2} listings ({}); {:.1} repositories/s ({elapsed:.1} s)",
            count.breakdown(n),
            n / elapsed,
        ),
        reference: "—".into(),
        ratio: format!("{:.2} ×", steps / 40.0),
        target: "≤ 40 requests a repository (pre-import + final import)",
        met: steps <= 40.0,
    }
}

/// Listings a [`ParallelWalk`](ferry_shared::walk::ParallelWalk) of the whole bucket makes.
async fn walk_listings(store: &dyn ferry_shared::storage::BlobStore) -> u64 {
    use futures::StreamExt;
    let mut walk =
        ferry_shared::walk::ParallelWalk::new(store, ferry_shared::walk::LISTINGS_IN_FLIGHT);
    while let Some(found) = walk.next().await {
        found.expect("walk");
    }
    walk.list_calls()
}

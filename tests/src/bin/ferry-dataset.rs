//! `ferry-dataset DIR`: writes the benchmark dataset (the old distribution layout) into DIR, the
//! same bytes for the same seed. See `ferry_tests::dataset`.

use clap::Parser;

use ferry_tests::dataset::{DatasetSpec, generate};

/// Write a registry in the old storage layout, directly, at any size.
#[derive(Debug, Parser)]
#[command(name = "ferry-dataset")]
struct Args {
    /// Directory that will hold `docker/registry/v2`.
    dir: std::path::PathBuf,
    /// Repositories.
    #[arg(long, default_value_t = 2000)]
    repositories: usize,
    /// Tags per repository (every fifth an OCI index of two images).
    #[arg(long, default_value_t = 5)]
    tags: usize,
    /// Layers per image.
    #[arg(long, default_value_t = 3)]
    layers: usize,
    /// Layers per image taken from the shared base pool.
    #[arg(long, default_value_t = 1)]
    shared_layers: usize,
    /// Base layers in the pool.
    #[arg(long, default_value_t = 20)]
    base_pool: usize,
    /// Bytes per layer.
    #[arg(long, default_value_t = 4096)]
    layer_bytes: usize,
    /// Seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

fn main() {
    let args = Args::parse();
    let started = std::time::Instant::now();
    let stats = generate(
        &args.dir,
        &DatasetSpec {
            repositories: args.repositories,
            tags: args.tags,
            layers: args.layers,
            shared_layers: args.shared_layers,
            base_pool: args.base_pool,
            layer_bytes: args.layer_bytes,
            seed: args.seed,
        },
    );
    println!(
        "{}: {} repositories, {} tags, {} manifests, {} blobs ({} layers and configs, {} bytes) in {:.1} s",
        args.dir.display(),
        stats.repositories,
        stats.tags,
        stats.manifests,
        stats.blobs,
        stats.copied_blobs,
        stats.copied_bytes,
        started.elapsed().as_secs_f64()
    );
}

//! Figure b: blob copy throughput where the bytes must move (the local driver in byte-copy mode
//! writes a new file, verifies its sha256 and publishes it; no link or reflink), against `cp -r`
//! of the same blob files.
//!
//! Both run in memory, on tmpfs (`/dev/shm`, or `FERRY_BENCH_COPY_DIR`): this figure is about
//! moving bytes, and on a disk the page cache's write-back decides it instead. On the same disk
//! `cp -r` ran at 2,458 MiB/s in one run and 313 in the next, 7× apart. Making copies durable is
//! one `syncfs` per step (`BlobStore::persist`), part of figures a1 and a2.
//!
//! Beside it, the figure shows how fast one core computes sha256, the pass over every byte that
//! `cp` does not make.

use std::process::Command;

use futures::StreamExt as _;

use ferry_shared::ids::Digest;
use ferry_shared::layout::{new_blob_key, old_blob_key};
use ferry_shared::storage::{BlobStore, LocalStore};
use ferry_tests::LayoutWriter;
use ferry_tests::env_size;

use super::{Figure, median, runs, timed};

/// Where the copies run: tmpfs when there is one.
fn copy_dir() -> tempfile::TempDir {
    let base = std::env::var_os("FERRY_BENCH_COPY_DIR")
        .map(std::path::PathBuf::from)
        .or_else(|| Some(std::path::PathBuf::from("/dev/shm")).filter(|p| p.is_dir()))
        .unwrap_or_else(std::env::temp_dir);
    tempfile::tempdir_in(base).expect("tempdir")
}

pub async fn copy_against_cp() -> Figure {
    let total_mib: usize = env_size("FERRY_BENCH_COPY_MIB", 1024);
    let blob_mib: usize = env_size("FERRY_BENCH_BLOB_MIB", 16).max(1);
    let concurrency: usize = env_size("FERRY_COPY_CONCURRENCY", 8);
    let data = copy_dir();
    let layout = LayoutWriter::new(data.path());
    let mut digests = Vec::new();
    let mut state = 0x5EED_u64;
    for _ in 0..(total_mib / blob_mib).max(1) {
        let mut bytes = Vec::with_capacity(blob_mib << 20);
        while bytes.len() < blob_mib << 20 {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            bytes.extend_from_slice(&state.to_le_bytes());
        }
        digests.push(Digest::parse(&layout.blob(&bytes)).expect("digest"));
    }
    let bytes = (digests.len() * (blob_mib << 20)) as f64;
    // The local driver hard-links when it can; this figure is about moving bytes.
    let store: std::sync::Arc<dyn BlobStore> = std::sync::Arc::new(
        LocalStore::new(data.path().to_owned())
            .expect("store")
            .with_byte_copies(),
    );
    let (mut ours, mut plain) = (Vec::new(), Vec::new());
    let source = data.path().join("docker/registry/v2/blobs");
    let target = data.path().join("cp");
    for run in 0..runs() {
        plain.push(timed(Command::new("cp").arg("-r").arg(&source).arg(&target)).as_secs_f64());
        std::fs::remove_dir_all(&target).expect("remove the copy");
        let started = std::time::Instant::now();
        let copied: Vec<_> = futures::stream::iter(&digests)
            .map(|digest| {
                let store = store.clone();
                async move {
                    store
                        .copy(&old_blob_key(digest), &new_blob_key(digest), Some(digest))
                        .await
                }
            })
            .buffer_unordered(concurrency)
            .collect()
            .await;
        ours.push(started.elapsed().as_secs_f64());
        assert!(copied.iter().all(Result::is_ok), "a copy failed");
        std::fs::remove_dir_all(data.path().join("gitlab")).expect("remove the copies");
        eprintln!(
            "b: run {}: ferry {:.0} MiB/s, cp -r {:.0} MiB/s",
            run + 1,
            bytes / ours[run] / 1048576.0,
            bytes / plain[run] / 1048576.0,
        );
    }
    let hash_mib_s =
        sha256_rate(&std::fs::read(data.path().join(old_blob_key(&digests[0]))).expect("blob"))
            / 1048576.0;
    let mib = |seconds: f64| bytes / seconds / 1048576.0;
    let (ours, plain) = (mib(median(ours)), mib(median(plain)));
    let ratio = ours / plain;
    Figure {
        id: "b",
        name: format!(
            "blob copy where bytes move, in memory (tmpfs): {} × {blob_mib} MiB, {concurrency} at once, hashed",
            digests.len()
        ),
        ferry: format!("{ours:.0} MiB/s (sha256 alone: {hash_mib_s:.0} MiB/s a core)"),
        reference: format!("cp -r {plain:.0} MiB/s"),
        ratio: format!("{ratio:.2} ×"),
        target: "≥ 0.9 ×",
        met: ratio >= 0.9,
    }
}

/// Bytes per second one core hashes with sha256, over `blob` repeated to about 1 GiB.
fn sha256_rate(blob: &[u8]) -> f64 {
    use sha2::Digest as _;
    let rounds = ((1usize << 30) / blob.len().max(1)).max(1);
    let started = std::time::Instant::now();
    for _ in 0..rounds {
        std::hint::black_box(sha2::Sha256::digest(std::hint::black_box(blob)));
    }
    (rounds * blob.len()) as f64 / started.elapsed().as_secs_f64()
}

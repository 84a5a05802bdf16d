//! Figure b: blob copy throughput where the bytes must move (the local driver in byte-copy mode
//! writes a new file, verifies its sha256 and publishes it; no link or reflink), against `cp -r`
//! of the same blob files. Both land in the page cache; making them durable is measured apart:
//! Ferry's copies then `persist` (one syncfs) against `cp -r` then `sync`.

use std::process::Command;

use futures::StreamExt as _;

use ferry_shared::ids::Digest;
use ferry_shared::layout::{new_blob_key, old_blob_key};
use ferry_shared::storage::{BlobStore, LocalStore};
use ferry_tests::LayoutWriter;
use ferry_tests::env_size;

use super::{Figure, median, runs, timed};

pub async fn copy_against_cp() -> Figure {
    let total_mib: usize = env_size("FERRY_BENCH_COPY_MIB", 1024);
    let blob_mib: usize = env_size("FERRY_BENCH_BLOB_MIB", 16).max(1);
    let concurrency: usize = env_size("FERRY_COPY_CONCURRENCY", 8);
    let data = tempfile::tempdir().expect("tempdir");
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
    let (mut ours, mut durable, mut plain, mut synced) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let source = data.path().join("docker/registry/v2/blobs");
    for run in 0..runs() {
        // Every run writes to fresh directories (nothing deleted in between: ext4 is slow to
        // allocate inodes next to ones it has just freed).
        let target = data.path().join(format!("cp-{run}"));
        plain.push(timed(Command::new("cp").arg("-r").arg(&source).arg(&target)).as_secs_f64());
        let target = data.path().join(format!("cp-sync-{run}"));
        synced.push(
            timed(
                Command::new("sh")
                    .arg("-c")
                    .arg("cp -r \"$0\" \"$1\" && sync")
                    .arg(&source)
                    .arg(&target),
            )
            .as_secs_f64(),
        );
        let _ = std::fs::rename(
            data.path().join("gitlab"),
            data.path().join(format!("gitlab-{run}")),
        );
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
        store.persist().await.expect("persist");
        durable.push(started.elapsed().as_secs_f64());
        eprintln!(
            "b: run {}: ferry {:.0} MiB/s ({:.0} MiB/s persisted), cp -r {:.0} MiB/s ({:.0} MiB/s with sync)",
            run + 1,
            bytes / ours[run] / 1048576.0,
            bytes / durable[run] / 1048576.0,
            bytes / plain[run] / 1048576.0,
            bytes / synced[run] / 1048576.0
        );
    }
    let mib = |seconds: f64| bytes / seconds / 1048576.0;
    let (ours, durable) = (mib(median(ours)), mib(median(durable)));
    let (plain, synced) = (mib(median(plain)), mib(median(synced)));
    let ratio = ours / plain;
    Figure {
        id: "b",
        name: format!(
            "blob copy where bytes move: {} × {blob_mib} MiB, {concurrency} at once, hashed",
            digests.len()
        ),
        ferry: format!("{ours:.0} MiB/s ({durable:.0} MiB/s persisted)"),
        reference: format!("cp -r {plain:.0} MiB/s ({synced:.0} MiB/s with sync)"),
        ratio: format!("{ratio:.2} ×"),
        target: "≥ 0.9 ×",
        met: ratio >= 0.9,
    }
}

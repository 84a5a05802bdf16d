//! Figure f: the importer's peak resident memory at full concurrency, every slot on a
//! repository of 10,000 tags.

use std::process::{Command, Stdio};
use std::time::Duration;

use ferry_tests::dataset::{DatasetSpec, generate};
use ferry_tests::{env_size, fresh_database};

use super::{Figure, median, release_bin, runs};

/// Peak resident set (VmHWM) of `pid` in KiB, if it still runs.
fn peak_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

pub async fn peak_rss_with_10k_tags() -> Figure {
    let slots: usize = env_size("FERRY_BENCH_SLOTS", 4);
    let tags: usize = env_size("FERRY_BENCH_BIG_TAGS", 10_000);
    let data = tempfile::tempdir().expect("tempdir");
    let spec = DatasetSpec {
        repositories: slots,
        tags,
        layers: 2,
        shared_layers: 1,
        base_pool: 20,
        layer_bytes: 256,
        seed: 7,
    };
    let started = std::time::Instant::now();
    let stats = generate(data.path(), &spec);
    eprintln!(
        "f: {slots} repositories × {tags} tags ({} manifests) written in {:.1} s",
        stats.manifests,
        started.elapsed().as_secs_f64()
    );
    let mut peaks = Vec::new();
    for run in 0..runs() {
        let _ = std::fs::rename(
            data.path().join("gitlab"),
            data.path().join(format!("gitlab-{run}")),
        );
        let database = fresh_database("bench_f").await;
        let mut child = Command::new(release_bin("ferry-importer"))
            .args(["import", "--all"])
            .env(
                "FERRY_STORAGE_URL",
                format!("file://{}", data.path().display()),
            )
            .env("FERRY_METADATA_DATABASE_URL", &database)
            .env("FERRY_MAX_CONCURRENT_IMPORTS", slots.to_string())
            .env("FERRY_LOG", "warn")
            // As the images and the chart run it (see importer/Dockerfile).
            .env("MALLOC_ARENA_MAX", "2")
            .stdout(Stdio::null())
            .spawn()
            .expect("ferry-importer runs");
        let pid = child.id();
        let mut peak = 0;
        let started = std::time::Instant::now();
        let status = loop {
            if let Some(kib) = peak_kib(pid) {
                peak = peak.max(kib);
            }
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(status.success(), "the import failed");
        eprintln!(
            "f: run {}: peak RSS {:.1} MiB, import {:.1} s",
            run + 1,
            peak as f64 / 1024.0,
            started.elapsed().as_secs_f64()
        );
        peaks.push(peak as f64 / 1024.0);
    }
    let peak = median(peaks);
    Figure {
        id: "f",
        name: format!("importer peak RSS, {slots} slots each on a {tags}-tag repository"),
        ferry: format!("{peak:.1} MiB"),
        reference: "—".into(),
        ratio: format!("{peak:.1} MiB"),
        target: "≤ 64 MiB",
        met: peak <= 64.0,
    }
}

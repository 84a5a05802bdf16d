//! Figure c: metadata registration, rows per second: every repository of a generated dataset
//! planned (not timed), then registered as a final import (repositories, blobs, manifests,
//! layers, references and tags, each repository in its own transaction, 4 at once), against a
//! raw `COPY` of the very same rows into the same, empty tables.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::{StreamExt as _, TryStreamExt as _};
use sqlx::Connection as _;

use ferry_importer::plan;
use ferry_importer::store::{CommitOutcome, MetadataStore, StepClaim};
use ferry_proto::common::v1::MigrationStatus;
use ferry_shared::ids::{Digest, RepositoryPath};
use ferry_shared::storage::BlobStore;
use ferry_tests::dataset::{DatasetSpec, generate};
use ferry_tests::{env_size, fresh_database};

use super::{Figure, median, runs};

/// Registers each repository as a final import straight away (the figure times registration).
const FINAL_WITHOUT_PRE_IMPORT: StepClaim = StepClaim {
    in_progress: MigrationStatus::ImportInProgress,
    from: &[],
    create: true,
    fence: 0,
    step: None,
};

/// The metadata tables, parents first.
const TABLES: [&str; 7] = [
    "repositories",
    "blobs",
    "manifests",
    "repository_blobs",
    "layers",
    "manifest_references",
    "tags",
];

async fn count_rows(url: &str) -> u64 {
    let pool = sqlx::PgPool::connect(url).await.expect("connect");
    let mut rows = 0;
    for table in TABLES {
        let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(&pool)
            .await
            .expect("count");
        rows += n as u64;
    }
    rows
}

/// COPYs every table of `from` into the empty, migrated `to`; returns the time of the COPY-ins.
async fn copy_tables(from: &str, to: &str) -> f64 {
    let mut source = sqlx::PgConnection::connect(from).await.expect("source");
    let mut target = sqlx::PgConnection::connect(to).await.expect("target");
    let mut dumps = Vec::new();
    for table in TABLES {
        let chunks: Vec<bytes::Bytes> = source
            .copy_out_raw(&format!("COPY {table} TO STDOUT (FORMAT binary)"))
            .await
            .expect("copy out")
            .try_collect()
            .await
            .expect("copy out rows");
        dumps.push((table, chunks));
    }
    let started = std::time::Instant::now();
    for (table, chunks) in dumps {
        let mut copy = target
            .copy_in_raw(&format!("COPY {table} FROM STDIN (FORMAT binary)"))
            .await
            .expect("copy in");
        for chunk in chunks {
            copy.send(chunk).await.expect("send");
        }
        copy.finish().await.expect("finish");
    }
    started.elapsed().as_secs_f64()
}

/// The floor any registration of `url`'s rows meets: how many rows it holds, and how long a raw
/// `COPY` of them into empty tables of the same schema takes.
pub async fn copy_floor(url: &str) -> (u64, f64) {
    let rows = count_rows(url).await;
    let empty = fresh_database("bench_floor").await;
    MetadataStore::connect(&empty, 1)
        .await
        .expect("db")
        .migrate()
        .await
        .expect("migrate");
    (rows, copy_tables(url, &empty).await)
}

/// A repository's tags and its planned chunks.
async fn planned(
    storage: &dyn BlobStore,
    path: &RepositoryPath,
) -> (Vec<(String, Digest)>, Vec<plan::Chunk>) {
    let (links, tags) = plan::list_and_read_tags(storage, path, 8)
        .await
        .expect("tags");
    let mut walk = plan::Walk::new(storage, path, &links, 8, &tags, &Default::default());
    let mut chunks = Vec::new();
    while let Some(chunk) = walk.next_chunk().await.expect("plan") {
        chunks.push(chunk);
    }
    (tags, chunks)
}

pub async fn registration_against_copy() -> Figure {
    let repositories: usize = env_size("FERRY_BENCH_REGISTER_REPOSITORIES", 1_000);
    let data = tempfile::tempdir().expect("tempdir");
    let spec = DatasetSpec {
        repositories,
        ..DatasetSpec::default()
    };
    generate(data.path(), &spec);
    let storage =
        ferry_shared::storage::open(&format!("file://{}", data.path().display())).expect("store");
    let paths: Vec<RepositoryPath> = (0..repositories)
        .map(|r| RepositoryPath::parse(&format!("bench/g{:02}/p{r:05}/app", r % 50)).expect("path"))
        .collect();
    let mut plans = Vec::new();
    for path in &paths {
        plans.push(planned(storage.as_ref(), path).await);
    }
    let plans = Arc::new(plans);
    let (mut ours, mut theirs, mut rows_seen) = (Vec::new(), Vec::new(), 0);
    for run in 0..runs() {
        let url = fresh_database("bench_c").await;
        let store = MetadataStore::connect(&url, 8).await.expect("db");
        store.migrate().await.expect("migrate");
        let started = std::time::Instant::now();
        futures::stream::iter(paths.iter().enumerate())
            .map(|(i, path)| {
                let (store, plans) = (store.clone(), Arc::clone(&plans));
                async move {
                    let (tags, chunks) = &plans[i];
                    let claimed = store
                        .begin_step(path, &FINAL_WITHOUT_PRE_IMPORT)
                        .await
                        .expect("begin")
                        .expect("claimed");
                    let mut commit = store.begin_commit(claimed).await.expect("transaction");
                    for chunk in chunks {
                        commit.write_chunk(chunk).await.expect("chunk");
                    }
                    let named: Vec<(&str, &Digest)> =
                        tags.iter().map(|(t, d)| (t.as_str(), d)).collect();
                    commit.write_tags(&named).await.expect("tags");
                    let expected: BTreeMap<String, Digest> = tags.iter().cloned().collect();
                    let outcome = commit
                        .finish(
                            MigrationStatus::ImportInProgress,
                            MigrationStatus::ImportComplete,
                            Some(&expected),
                        )
                        .await
                        .expect("commit");
                    assert!(
                        matches!(outcome, CommitOutcome::Committed(_)),
                        "{outcome:?}"
                    );
                }
            })
            .buffer_unordered(4)
            .collect::<Vec<()>>()
            .await;
        let elapsed = started.elapsed().as_secs_f64();
        let (rows, copied) = copy_floor(&url).await;
        eprintln!(
            "c: run {}: {rows} rows registered in {elapsed:.2} s ({:.0}/s), COPY {copied:.2} s ({:.0}/s)",
            run + 1,
            rows as f64 / elapsed,
            rows as f64 / copied
        );
        ours.push(rows as f64 / elapsed);
        theirs.push(rows as f64 / copied);
        rows_seen = rows;
    }
    let (ours, theirs) = (median(ours), median(theirs));
    let ratio = ours / theirs;
    Figure {
        id: "c",
        name: format!(
            "metadata registration, {rows_seen} rows ({repositories} repositories × 5 tags)"
        ),
        ferry: format!("{ours:.0} rows/s"),
        reference: format!("COPY {theirs:.0} rows/s"),
        ratio: format!("{ratio:.2} ×"),
        target: "≥ 0.5 ×",
        met: ratio >= 0.5,
    }
}

//! Repositories larger than one planning chunk (256 tag targets), against real PostgreSQL: they
//! are registered whole in one transaction, index children and their indexes may land in
//! different chunks, a broken manifest in the last chunk commits nothing, a cancellation is not
//! held up by the open transaction, and a final import registers only what was pushed after
//! its pre-import.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::PgPool;

use ferry_importer::notifier::Notifier;
use ferry_importer::plan::CHUNK_MANIFESTS;
use ferry_importer::service::{ImportService, Importer, StepLimits};
use ferry_importer::store::MetadataStore;
use ferry_proto::common::v1::ImportType;
use ferry_shared::storage::BlobStore;
use ferry_tests::{GatedStore, ImporterHarness, LayoutWriter, fresh_database, wait_until};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// Tags `repository` with `images` images (`t0000`, `t0001`, ...); returns their digests.
fn tag_images(layout: &LayoutWriter, repository: &str, images: usize) -> Vec<String> {
    (0..images)
        .map(|i| {
            layout.image(
                repository,
                &format!("t{i:04}"),
                &format!("{repository} {i}"),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_repository_of_several_chunks_is_registered_whole_with_its_indexes() {
    let h = ImporterHarness::new().await;
    let layout = h.layout();
    let path = "big/project/app";
    let images = tag_images(&layout, path, 2 * CHUNK_MANIFESTS + 100);
    // Indexes over tagged images (wherever their chunk is) and over untagged children, some
    // children shared by two indexes. Digests order the chunks, so these land all over.
    let mut references = 0;
    let mut untagged = Vec::new();
    for i in 0..30 {
        let child = layout
            .image_parts(path, "scratch", &format!("untagged {i}"))
            .0;
        untagged.push(child);
    }
    std::fs::remove_dir_all(h.root.join(format!(
        "docker/registry/v2/repositories/{path}/_manifests/tags/scratch"
    )))
    .expect("untag scratch");
    for i in 0..30 {
        let children = [
            (images[i * 20].as_str(), OCI_MANIFEST),
            (untagged[i].as_str(), OCI_MANIFEST),
            (untagged[(i + 1) % 30].as_str(), OCI_MANIFEST),
        ];
        layout.index(path, &format!("multi-{i:02}"), &children);
        references += children.len();
    }
    let tagged = images.len() + 30;

    let (status, error) = h.run(path, ImportType::Pre).await;
    assert_eq!(status, "pre_import_complete", "{error:?}");
    assert_eq!(h.count("manifests", path).await, (tagged + 30) as i64);
    assert_eq!(
        h.count("manifest_references", path).await,
        references as i64
    );
    // Each image has its own config and layer.
    assert_eq!(
        h.count("repository_blobs", path).await,
        2 * (images.len() + 30) as i64
    );
    assert_eq!(h.count("layers", path).await, (images.len() + 30) as i64);
    assert_eq!(
        h.count("tags", path).await,
        0,
        "a pre-import writes no tags"
    );

    let (status, error) = h.run(path, ImportType::Final).await;
    assert_eq!(status, "import_complete", "{error:?}");
    assert_eq!(h.count("tags", path).await, tagged as i64);
    assert_eq!(h.count("manifests", path).await, (tagged + 30) as i64);
}

#[tokio::test]
async fn a_broken_manifest_in_the_last_chunk_commits_nothing_of_the_earlier_ones() {
    let h = ImporterHarness::new().await;
    let layout = h.layout();
    let path = "big/broken/app";
    let images = tag_images(&layout, path, 2 * CHUNK_MANIFESTS);
    // The highest digest sorts last, so its chunk is planned after every other one is written.
    let wrong = format!("sha256:{}", "f".repeat(64));
    let payload = std::fs::read(h.root.join(format!(
        "docker/registry/v2/blobs/sha256/{}/{}/data",
        &images[0][7..9],
        &images[0][7..]
    )))
    .expect("payload");
    layout.blob_at(&wrong, &payload);
    layout.link_revision(path, &wrong);
    layout.tag_link(path, "zz-last", &wrong);
    layout.image("big/neighbour/app", "v1", "neighbour");

    let (status, error) = h.run(path, ImportType::Pre).await;
    assert_eq!(status, "pre_import_failed");
    assert!(error.expect("a reason").contains(&wrong));
    for table in ["manifests", "repository_blobs", "layers"] {
        assert_eq!(
            h.count(table, path).await,
            0,
            "nothing committed in {table}"
        );
    }
    let (status, _) = h.run("big/neighbour/app", ImportType::Pre).await;
    assert_eq!(status, "pre_import_complete");
}

#[tokio::test]
async fn a_final_import_plans_only_the_manifests_pushed_after_its_pre_import() {
    let h = ImporterHarness::new().await;
    let layout = h.layout();
    let path = "group/pushed/app";
    let before = tag_images(&layout, path, 3);
    let (status, _) = h.run(path, ImportType::Pre).await;
    assert_eq!(status, "pre_import_complete");
    let after = layout.image(path, "new", "pushed after the pre-import");
    // Registered manifests are not read again: the final import succeeds without their payloads.
    for digest in &before {
        std::fs::remove_file(h.root.join(format!(
            "docker/registry/v2/blobs/sha256/{}/{}/data",
            &digest[7..9],
            &digest[7..]
        )))
        .expect("remove a registered payload");
    }
    let (status, error) = h.run(path, ImportType::Final).await;
    assert_eq!(status, "import_complete", "{error:?}");
    assert_eq!(h.count("manifests", path).await, 4);
    assert_eq!(h.count("tags", path).await, 4);
    assert_eq!(h.count("repository_blobs", path).await, 8);
    let config: String =
        sqlx::query_scalar("SELECT configuration_blob_digest FROM manifests WHERE digest = $1")
            .bind(&after)
            .fetch_one(&h.pool)
            .await
            .expect("the new manifest");
    assert!(h.copied(&config), "the new image's blobs were copied");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_from_elsewhere_is_not_held_up_by_a_step_writing_its_chunks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = "big/canceled/app";
    let layout = LayoutWriter::new(dir.path());
    tag_images(&layout, path, CHUNK_MANIFESTS + 10);
    // The last chunk's manifest never arrives: the first chunk is written and the step waits
    // with its transaction open.
    let last = format!("sha256:{}", "f".repeat(64));
    layout.blob_at(&last, b"never read");
    layout.link_revision(path, &last);
    layout.tag_link(path, "zz-last", &last);
    let local =
        ferry_shared::storage::open(&format!("file://{}", dir.path().display())).expect("storage");
    let (stuck, _gate_stays_closed) = GatedStore::on_key(
        Arc::clone(&local),
        format!("docker/registry/v2/blobs/sha256/ff/{}/data", &last[7..]),
    );
    let url = fresh_database("chunks_cancel").await;
    let db = MetadataStore::connect(&url, 8).await.expect("connect");
    db.migrate().await.expect("migrate");
    let pool = PgPool::connect(&url).await.expect("pool");
    let importer = |storage: Arc<dyn BlobStore>| {
        let notifier = Notifier::new("http://127.0.0.1:1", Duration::ZERO).expect("notifier");
        let limits = StepLimits {
            max_concurrent_imports: 1,
            pre_import_timeout: Duration::from_secs(60),
            import_timeout: Duration::from_secs(60),
            copy_concurrency: 2,
            tag_concurrency: 4,
            cancel_poll: Duration::from_millis(100),
        };
        Importer::new(storage, db.clone(), Some(notifier), limits)
    };
    let running = importer(Arc::new(stuck));
    let other = importer(local);
    running
        .start_import(path, ImportType::Pre, 0, 0)
        .await
        .expect("start");
    // Wait until the first chunk is written and the step waits with its transaction open.
    wait_until(
        "a chunk written, its transaction open",
        Duration::from_secs(30),
        async || {
            let open: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND state = 'idle in transaction'",
            )
            .fetch_one(&pool)
            .await
            .expect("activity");
            if open > 0 {
                Ok(())
            } else {
                Err("no transaction open")
            }
        },
    )
    .await;
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(5), other.cancel_import(path, 0, false))
        .await
        .expect("the cancel is not blocked by the step's transaction")
        .expect("cancel");
    assert!(started.elapsed() < Duration::from_secs(5));
    wait_until(
        "the step to stop",
        Duration::from_secs(10),
        async || match running.in_flight() {
            0 => Ok(()),
            steps => Err(format!("{steps} step(s) running")),
        },
    )
    .await;
    let status: String =
        sqlx::query_scalar("SELECT migration_status FROM repositories WHERE path = $1")
            .bind(path)
            .fetch_one(&pool)
            .await
            .expect("status");
    assert_eq!(status, "pre_import_canceled");
    let manifests: i64 = sqlx::query_scalar("SELECT count(*) FROM manifests")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(manifests, 0, "the open transaction was rolled back");
}

//! `ferryctl verify` against the registry-made sample: after a migration every repository
//! matches its source; then a copy under `gitlab/` is damaged, another removed, and a tag moved
//! in the source, and verification names each of them (and nothing else). On local disk, where
//! every copy is hashed, and on the GCS emulator, where copies are compared by the CRC32C the
//! bucket keeps (and hashed with `--deep`).

use std::time::Duration;

use sqlx::PgPool;

use ferry_shared::ids::{Digest, RepositoryPath};
use ferry_shared::layout;
use ferry_tests::buckets::{Bucket, DirBucket, GcsBucket};
use ferry_tests::{Cluster, SampleRegistry, metric};

const APP: &str = "group-a/project-1/app";
const RETAG: &str = "group-c/project-4/retag";

/// Runs `ferryctl verify ARGS --json`; returns whether it succeeded and its JSON report.
fn verify(cluster: &Cluster, args: &[&str]) -> (bool, serde_json::Value) {
    let output = cluster.ferryctl(&[&["verify"], args, &["--json"]].concat());
    let report = serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
        panic!("ferryctl verify {args:?}: no JSON report ({error}): {output:?}")
    });
    (output.status.success(), report)
}

/// The (kind, subject) of every difference reported for `path`.
fn differences(report: &serde_json::Value, path: &str) -> Vec<(String, String)> {
    let problems = report["problems"].as_array().expect("problems");
    let Some(problem) = problems.iter().find(|p| p["path"] == path) else {
        return Vec::new();
    };
    let listed = problem["differences"].as_array().expect("differences");
    listed
        .iter()
        .map(|d| {
            let text = |field: &str| d[field].as_str().expect(field).to_owned();
            (text("kind"), text("subject"))
        })
        .collect()
}

/// The app's config, and a layer no other repository of the sample shares.
async fn app_blobs(cluster: &Cluster) -> (Digest, Digest) {
    let db = PgPool::connect(&cluster.metadata_database_url)
        .await
        .expect("metadata database");
    let config: String = sqlx::query_scalar(
        "SELECT m.configuration_blob_digest FROM manifests m JOIN repositories r \
         ON r.id = m.repository_id WHERE r.path = $1 AND m.configuration_blob_digest IS NOT NULL \
         LIMIT 1",
    )
    .bind(APP)
    .fetch_one(&db)
    .await
    .expect("the app's config");
    let layer: String = sqlx::query_scalar(
        "SELECT l.digest FROM layers l JOIN repositories r ON r.id = l.repository_id \
         WHERE r.path = $1 AND NOT EXISTS (SELECT 1 FROM layers o JOIN repositories p \
             ON p.id = o.repository_id WHERE o.digest = l.digest AND p.path <> $1) \
         ORDER BY l.digest LIMIT 1",
    )
    .bind(APP)
    .fetch_one(&db)
    .await
    .expect("a layer only the app has");
    db.close().await;
    let parse = |digest: String| Digest::parse(&digest).expect("digest");
    (parse(config), parse(layer))
}

async fn verify_then_break_and_find(
    sample: &SampleRegistry,
    cluster: &Cluster,
    bucket: &dyn Bucket,
    on_gcs: bool,
) {
    let inventory = cluster.inventory().await;
    let repositories = sample.repositories().len() as u64;
    assert_eq!(inventory.repositories_registered, repositories);
    cluster.migrate(Duration::from_secs(180)).await;

    // Faithfully migrated: everything matches.
    let (ok, report) = verify(cluster, &["--all"]);
    assert!(ok, "{report:#}");
    assert_eq!(report["repositories"], repositories, "{report:#}");
    assert_eq!(report["matched"], repositories, "{report:#}");
    let blobs = report["blobs"].as_u64().expect("blobs");
    assert!(blobs > 0, "{report:#}");
    if on_gcs {
        // Compared by the CRC32C the bucket keeps of both objects, nothing re-read...
        assert_eq!(report["blobs_by_checksum"], blobs, "{report:#}");
        assert_eq!(report["bytes_hashed"], 0, "{report:#}");
        // ...unless asked to.
        let (ok, deep) = verify(cluster, &["--all", "--deep", "--concurrency", "2"]);
        assert!(ok, "{deep:#}");
        assert_eq!(deep["blobs_by_checksum"], 0, "{deep:#}");
        assert!(deep["bytes_hashed"].as_u64() > Some(0), "{deep:#}");
    } else {
        // A filesystem keeps no checksum: every copy is hashed.
        assert_eq!(report["blobs_by_checksum"], 0, "{report:#}");
        assert!(report["bytes_hashed"].as_u64() > Some(0), "{report:#}");
    }

    // Damage one copy (same size, other bytes), remove another, move a tag in the source.
    let (config, layer) = app_blobs(cluster).await;
    let damaged = layout::new_blob_key(&layer);
    let mut bytes = bucket.get(&damaged).await.expect("the layer's copy");
    *bytes.last_mut().expect("a non-empty layer") ^= 0xff;
    // Removed first: on local disk the copy is a hard link to the source, which must stay whole.
    bucket.remove(&damaged).await;
    bucket.put(&damaged, &bytes).await;
    bucket.remove(&layout::new_blob_key(&config)).await;
    let retag = RepositoryPath::parse(RETAG).expect("path");
    let untagged = sample.repository(RETAG)["untagged_manifests"][0]
        .as_str()
        .expect("the retag case's untagged manifest")
        .to_owned();
    bucket
        .put(
            &layout::tag_current_link_key(&retag, "stable"),
            untagged.as_bytes(),
        )
        .await;

    let (ok, report) = verify(cluster, &["--all"]);
    assert!(!ok, "differences must fail the command: {report:#}");
    assert_eq!(report["differ"], 2, "{report:#}");
    assert_eq!(report["matched"], repositories - 2, "{report:#}");
    let app = differences(&report, APP);
    assert!(
        app.contains(&("blob_content_differs".into(), layer.to_string())),
        "{app:?}"
    );
    assert!(
        app.contains(&("blob_missing".into(), config.to_string())),
        "{app:?}"
    );
    assert_eq!(app.len(), 2, "nothing else differs in {APP}: {app:?}");
    let moved = differences(&report, RETAG);
    assert!(
        moved.contains(&("tag_moved".into(), "stable".into())),
        "{moved:?}"
    );
    // The tag now reaches a manifest the migration never registered (it was untagged).
    assert!(
        moved.contains(&("manifest_missing".into(), untagged.clone())),
        "{moved:?}"
    );

    // A path that is not migrated is reported, not verified; one that is still matches.
    let (ok, report) = verify(cluster, &["no/such/repository", "group-a/project-2/base"]);
    assert!(!ok, "{report:#}");
    assert_eq!(report["not_migrated"], 1, "{report:#}");
    assert_eq!(report["matched"], 1, "{report:#}");

    // The outcome is recorded on the repository and counted in the metrics.
    let status = cluster.ferryctl(&["status", APP, "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status JSON");
    assert_eq!(status["verification"]["outcome"], "differs", "{status:#}");
    assert_eq!(status["verification"]["differences"], 2, "{status:#}");
    let metrics = cluster.metrics().await;
    let differs = metric(&metrics, "ferry_verifications_total{outcome=\"differs\"}");
    assert_eq!(differs, Some(2.0), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_names_a_damaged_copy_a_missing_one_and_a_moved_tag_on_local_disk() {
    let sample = SampleRegistry::build(false);
    let cluster = Cluster::start(&sample.root(), 2).await;
    let bucket = DirBucket(sample.root());
    verify_then_break_and_find(&sample, &cluster, &bucket, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_compares_checksums_on_a_gcs_bucket_and_names_every_difference() {
    std::env::var("STORAGE_EMULATOR_HOST")
        .expect("STORAGE_EMULATOR_HOST must point at fake-gcs-server: run `make test`");
    let sample = SampleRegistry::build(false);
    let bucket = GcsBucket::new().await;
    bucket.upload_dir(&sample.root()).await;
    let cluster = Cluster::start_with_storage(format!("gs://{}", bucket.name()), 2).await;
    verify_then_break_and_find(&sample, &cluster, &bucket, true).await;
}

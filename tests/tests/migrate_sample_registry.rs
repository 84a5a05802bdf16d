//! A registry written by the real docker-registry (images pushed by skopeo) is migrated through
//! the real scheduler and importers over gRPC into real PostgreSQL, and the result is checked
//! against the registry's own HTTP API and the copied blob tree.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use sqlx::{PgPool, Row};

use ferry_proto::scheduler::v1::{GetLeaseRequest, GetRepositoryRequest};
use ferry_tests::buckets::{Bucket, DirBucket, GcsBucket};
use ferry_tests::{Cluster, RegistryServer, SampleRegistry};

const BROKEN: &str = "group-d/project-6/broken";

fn strings(value: &serde_json::Value) -> Vec<String> {
    value
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sample_registry_migrates_end_to_end_and_a_broken_repository_fails_alone() {
    let sample = SampleRegistry::build(true);
    let cluster = Cluster::start(&sample.root(), 2).await;
    let bucket = DirBucket(sample.root());
    migrate_and_check(&sample, &cluster, &bucket).await;
}

/// The same migration with the registry in a GCS bucket (fake-gcs-server): the importers list,
/// read and rewrite through the GCS driver. `make test` points `STORAGE_EMULATOR_HOST` at the
/// emulator, as Google's SDKs expect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sample_registry_migrates_end_to_end_from_a_gcs_bucket() {
    let emulator = std::env::var("STORAGE_EMULATOR_HOST")
        .expect("STORAGE_EMULATOR_HOST must point at fake-gcs-server: run `make test`");
    let sample = SampleRegistry::build(true);
    let bucket = GcsBucket::new().await;
    assert!(
        emulator.contains(bucket.endpoint().trim_start_matches("http://")),
        "{emulator}"
    );
    let uploaded = bucket.upload_dir(&sample.root()).await;
    assert!(uploaded > 50, "uploaded {uploaded} objects");
    let cluster = Cluster::start_with_storage(format!("gs://{}", bucket.name()), 2).await;
    migrate_and_check(&sample, &cluster, &bucket).await;
}

async fn migrate_and_check(sample: &SampleRegistry, cluster: &Cluster, bucket: &dyn Bucket) {
    let mut client = cluster.client().await;
    check_health(&cluster.scheduler_url, "ferry.scheduler.v1.Scheduler").await;
    for url in &cluster.importer_urls {
        check_health(url, "ferry.importer.v1.Importer").await;
    }

    // Inventory: every repository in the bucket, streamed.
    let last = ferry_tests::run_inventory(&mut client).await;
    let expected_repositories = sample.repositories().len() as u64;
    assert!(last.done);
    assert_eq!(last.repositories_found, expected_repositories);
    assert_eq!(last.repositories_registered, expected_repositories);

    let summary = cluster.migrate(Duration::from_secs(180)).await;
    let lease = client
        .get_lease(GetLeaseRequest {})
        .await
        .expect("lease")
        .into_inner();
    assert!(
        lease.held && lease.fence >= 1 && !lease.holder.is_empty(),
        "{lease:?}"
    );
    assert_eq!(summary.total, expected_repositories);
    assert_eq!(
        ferry_tests::state_count(&summary, "import_done"),
        expected_repositories - 1,
        "{summary:?}"
    );
    assert_eq!(
        ferry_tests::state_count(&summary, "import_skipped"),
        1,
        "{summary:?}"
    );

    let meta = PgPool::connect(&cluster.metadata_database_url)
        .await
        .expect("metadata db");
    check_broken_repository(sample, cluster, &meta).await;
    check_statuses(sample, &meta).await;
    check_index_children(sample, &meta).await;
    check_untagged_and_removed(sample, &meta).await;
    check_blob_tree(sample, &meta, bucket).await;
    check_tags_against_registry(sample, &meta).await;

    // A second inventory registers nothing new.
    let again = ferry_tests::run_inventory(&mut client).await;
    assert_eq!(
        (again.repositories_found, again.repositories_registered),
        (expected_repositories, 0)
    );
}

/// The server answers `grpc.health.v1` for itself and for the whole server.
async fn check_health(url: &str, service: &str) {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let channel = tonic::transport::Endpoint::from_shared(url.to_owned())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let mut health = HealthClient::new(channel);
    for name in ["", service] {
        let response = health
            .check(HealthCheckRequest {
                service: name.into(),
            })
            .await
            .expect("health check")
            .into_inner();
        assert_eq!(response.status(), ServingStatus::Serving, "{name:?}");
    }
}

/// The repository whose tagged manifest blob is missing fails its pre-import with a reason naming
/// the digest, is aborted and retried by the scheduler, then skipped; nothing of it is committed.
async fn check_broken_repository(sample: &SampleRegistry, cluster: &Cluster, meta: &PgPool) {
    let missing = strings(&sample.repository(BROKEN)["deleted_manifest_blobs"]);
    let missing = missing.first().expect("deleted manifest digest");
    let row =
        sqlx::query("SELECT migration_status, migration_error FROM repositories WHERE path = $1")
            .bind(BROKEN)
            .fetch_one(meta)
            .await
            .expect("broken repository row");
    assert_eq!(
        row.get::<String, _>("migration_status"),
        "pre_import_failed"
    );
    let error: String = row.get("migration_error");
    assert!(
        error.contains(missing.as_str()),
        "reason {error:?} names {missing}"
    );
    let manifests: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM manifests m JOIN repositories r ON r.id = m.repository_id WHERE r.path = $1",
    )
    .bind(BROKEN)
    .fetch_one(meta)
    .await
    .expect("count");
    assert_eq!(manifests, 0, "a failed pre-import commits nothing");

    let mut client = cluster.client().await;
    let repo = client
        .get_repository(GetRepositoryRequest {
            path: BROKEN.into(),
        })
        .await
        .expect("scheduler repository")
        .into_inner();
    assert_eq!(repo.migration_state.as_str(), "import_skipped");
    assert_eq!(repo.skipped_reason, "too_many_retries");
    assert_eq!(repo.retries_count, 3);
    assert_eq!(repo.aborted_in_state, "pre_importing");
    assert!(
        repo.last_error.contains(missing.as_str()),
        "{}",
        repo.last_error
    );
}

async fn check_statuses(sample: &SampleRegistry, meta: &PgPool) {
    for repo in sample.repositories() {
        let path = repo["path"].as_str().expect("path");
        if path == BROKEN {
            continue;
        }
        let status: String =
            sqlx::query_scalar("SELECT migration_status FROM repositories WHERE path = $1")
                .bind(path)
                .fetch_one(meta)
                .await
                .unwrap_or_else(|e| panic!("{path} has no repositories row: {e}"));
        assert_eq!(status, "import_complete", "{path}");
    }
}

/// Index and manifest-list children are registered and referenced by their parent.
async fn check_index_children(sample: &SampleRegistry, meta: &PgPool) {
    for path in ["group-b/project-3/multi", "group-b/project-3/multi-docker"] {
        let repo = sample.repository(path);
        let tagged = repo["tags"]["v1"].as_str().expect("v1 digest");
        let expected: BTreeSet<String> = repo["manifests"][tagged]["children"]
            .as_array()
            .expect("children")
            .iter()
            .map(|c| c["digest"].as_str().expect("digest").to_owned())
            .collect();
        assert_eq!(expected.len(), 2, "{path}");
        let children: BTreeSet<String> = sqlx::query_scalar(
            "SELECT c.digest FROM manifest_references mr \
             JOIN manifests p ON p.id = mr.parent_id JOIN manifests c ON c.id = mr.child_id \
             JOIN repositories r ON r.id = p.repository_id WHERE r.path = $1 AND p.digest = $2",
        )
        .bind(path)
        .bind(tagged)
        .fetch_all(meta)
        .await
        .expect("references")
        .into_iter()
        .collect();
        assert_eq!(children, expected, "{path}");
        let media_type: String = sqlx::query_scalar(
            "SELECT m.media_type FROM manifests m JOIN repositories r ON r.id = m.repository_id \
             WHERE r.path = $1 AND m.digest = $2",
        )
        .bind(path)
        .bind(tagged)
        .fetch_one(meta)
        .await
        .expect("index row");
        assert_eq!(
            media_type,
            repo["manifests"][tagged]["media_type"]
                .as_str()
                .expect("type"),
            "{path}"
        );
    }
}

/// A manifest no tag points to, and a tag whose current link is gone, are not imported.
async fn check_untagged_and_removed(sample: &SampleRegistry, meta: &PgPool) {
    let retag = sample.repository("group-c/project-4/retag");
    let untagged = strings(&retag["untagged_manifests"]);
    assert_eq!(untagged.len(), 1);
    let gone = sample.repository("group-c/project-5/gone");
    let removed = gone["removed_tags"]["removed"]
        .as_str()
        .expect("removed tag digest");
    for (path, digest) in [
        ("group-c/project-4/retag", untagged[0].as_str()),
        ("group-c/project-5/gone", removed),
    ] {
        let count: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM manifests m JOIN repositories r ON r.id = m.repository_id \
             WHERE r.path = $1 AND m.digest = $2",
        )
        .bind(path)
        .bind(digest)
        .fetch_one(meta)
        .await
        .expect("count");
        assert_eq!(count, 0, "{path}: {digest} must not be imported");
    }
    let tags: Vec<String> = sqlx::query_scalar(
        "SELECT t.name FROM tags t JOIN repositories r ON r.id = t.repository_id WHERE r.path = $1 ORDER BY 1",
    )
    .bind("group-c/project-5/gone")
    .fetch_all(meta)
    .await
    .expect("tags");
    assert_eq!(tags, vec!["keep".to_owned()]);
}

/// Every config and layer blob a registered manifest references sits under `gitlab/` with the
/// right sha256, and the registered blobs are exactly those the sample's tagged manifests use.
async fn check_blob_tree(sample: &SampleRegistry, meta: &PgPool, bucket: &dyn Bucket) {
    let referenced: Vec<String> = sqlx::query_scalar(
        "SELECT digest FROM layers UNION SELECT configuration_blob_digest FROM manifests \
         WHERE configuration_blob_digest IS NOT NULL",
    )
    .fetch_all(meta)
    .await
    .expect("referenced blobs");
    assert!(!referenced.is_empty());
    for digest in &referenced {
        let hex = &digest["sha256:".len()..];
        let key = format!(
            "gitlab/docker/registry/v2/blobs/sha256/{}/{hex}/data",
            &hex[..2]
        );
        let data = bucket
            .get(&key)
            .await
            .unwrap_or_else(|| panic!("{digest} not under gitlab/"));
        assert_eq!(&ferry_shared::ids::Digest::of(&data).to_string(), digest);
    }
    let mut expected = BTreeSet::new();
    for repo in sample.repositories() {
        if repo["path"] == BROKEN {
            continue;
        }
        let manifests = repo["manifests"].as_object().expect("manifests");
        let mut reachable: Vec<String> = repo["tags"]
            .as_object()
            .expect("tags")
            .values()
            .map(|d| d.as_str().expect("digest").to_owned())
            .collect();
        while let Some(digest) = reachable.pop() {
            let manifest = &manifests[&digest];
            expected.extend(manifest["config"].as_str().map(str::to_owned));
            expected.extend(strings(&manifest["layers"]));
            if let Some(children) = manifest["children"].as_array() {
                reachable.extend(
                    children
                        .iter()
                        .map(|c| c["digest"].as_str().expect("digest").to_owned()),
                );
            }
        }
    }
    let registered: BTreeSet<String> = referenced.into_iter().collect();
    assert_eq!(registered, expected);
}

/// Every tag maps to the digest the registry itself serves.
async fn check_tags_against_registry(sample: &SampleRegistry, meta: &PgPool) {
    let registry = RegistryServer::start(&sample.root()).await;
    let rows = sqlx::query(
        "SELECT r.path, t.name, m.digest FROM tags t JOIN repositories r ON r.id = t.repository_id \
         JOIN manifests m ON m.id = t.manifest_id",
    )
    .fetch_all(meta)
    .await
    .expect("tags");
    let imported: BTreeMap<(String, String), String> = rows
        .into_iter()
        .map(|row| ((row.get("path"), row.get("name")), row.get("digest")))
        .collect();
    let mut expected = BTreeMap::new();
    for repo in sample.repositories() {
        let path = repo["path"].as_str().expect("path");
        if path == BROKEN {
            continue;
        }
        for tag in repo["tags"].as_object().expect("tags").keys() {
            let served = registry
                .manifest_digest(path, tag)
                .await
                .expect("registry serves the tag");
            expected.insert((path.to_owned(), tag.clone()), served);
        }
        for tag in repo["removed_tags"]
            .as_object()
            .into_iter()
            .flat_map(|t| t.keys())
        {
            assert_eq!(
                registry.manifest_digest(path, tag).await,
                None,
                "{path}:{tag} is gone"
            );
        }
    }
    assert_eq!(imported, expected);
}

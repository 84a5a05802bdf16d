//! The importers' read-only OCI endpoint, proven with the real clients: every tag of the sample
//! that Debian's docker-registry wrote and serves is pulled with `skopeo` from docker-registry
//! and from Ferry, before the migration (Ferry's old code path) and after it (the new one), and
//! the manifests must match byte for byte and the pulled blob sets by digest. On local disk and
//! on the GCS emulator.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use ferry_tests::buckets::GcsBucket;
use ferry_tests::{Cluster, RegistryServer, SampleRegistry, http_request, metric, scrape};

const MANIFEST_TYPES: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.docker.distribution.manifest.v2+json";

/// Runs skopeo against a plain-HTTP registry and returns its standard output.
fn skopeo(args: &[&str]) -> Vec<u8> {
    let output = Command::new("skopeo")
        .arg("--insecure-policy")
        .args(args)
        .output()
        .expect("run skopeo (make test installs it)");
    assert!(
        output.status.success(),
        "skopeo {args:?} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

/// The digests of the blobs (configs, layers, manifests) in an OCI layout directory.
fn blob_set(layout: &Path) -> BTreeSet<String> {
    std::fs::read_dir(layout.join("blobs/sha256"))
        .expect("OCI layout blobs")
        .map(|entry| {
            format!(
                "sha256:{}",
                entry.expect("entry").file_name().to_string_lossy()
            )
        })
        .collect()
}

/// What one registry serves for one tag: the raw manifest and the blobs a full pull fetches.
#[derive(Debug, PartialEq, Eq)]
struct Pulled {
    manifest: Vec<u8>,
    blobs: BTreeSet<String>,
}

fn pull(port: u16, repository: &str, tag: &str, into: &Path) -> Pulled {
    let source = format!("docker://127.0.0.1:{port}/{repository}:{tag}");
    let manifest = skopeo(&["inspect", "--raw", "--tls-verify=false", &source]);
    let layout = into.join(format!("{port}-{}-{tag}", repository.replace('/', "_")));
    let destination = format!("oci:{}:{tag}", layout.display());
    skopeo(&[
        "copy",
        "--all",
        "--quiet",
        "--src-tls-verify=false",
        &source,
        &destination,
    ]);
    Pulled {
        manifest,
        blobs: blob_set(&layout),
    }
}

fn list_tags(port: u16, repository: &str) -> BTreeSet<String> {
    let listed = skopeo(&[
        "list-tags",
        "--tls-verify=false",
        &format!("docker://127.0.0.1:{port}/{repository}"),
    ]);
    let listed: serde_json::Value = serde_json::from_slice(&listed).expect("list-tags JSON");
    listed["Tags"]
        .as_array()
        .expect("Tags")
        .iter()
        .map(|tag| tag.as_str().expect("tag").to_owned())
        .collect()
}

/// Pulls every served tag from docker-registry and from Ferry's endpoint and compares them;
/// checks that Ferry's `code_path` answered.
async fn pull_everything_alike(
    sample: &SampleRegistry,
    reference: &RegistryServer,
    ferry_port: u16,
    code_path: &str,
) -> BTreeMap<(String, String), Pulled> {
    let mut pulled = BTreeMap::new();
    let work = tempfile::tempdir().expect("pull directory");
    for repository in sample.repositories() {
        let path = repository["path"].as_str().expect("path");
        let tags = repository["tags"].as_object().expect("tags");
        for tag in tags.keys() {
            let expected = pull(reference.port, path, tag, work.path());
            let served = pull(ferry_port, path, tag, work.path());
            assert_eq!(
                served.manifest, expected.manifest,
                "{path}:{tag} manifest ({code_path} path)"
            );
            assert_eq!(
                served.blobs, expected.blobs,
                "{path}:{tag} blobs ({code_path} path)"
            );
            pulled.insert((path.to_owned(), tag.clone()), served);
            let head = http_request(
                ferry_port,
                "HEAD",
                &format!("/v2/{path}/manifests/{tag}"),
                MANIFEST_TYPES,
            )
            .await
            .expect("Ferry answers");
            assert_eq!(head.status, 200, "{path}:{tag}");
            assert_eq!(
                head.header("ferry-code-path"),
                Some(code_path),
                "{path}:{tag}"
            );
            assert_eq!(
                head.header("docker-content-digest"),
                tags[tag].as_str(),
                "{path}:{tag}"
            );
        }
        let served: BTreeSet<String> = tags.keys().cloned().collect();
        let listed = list_tags(ferry_port, path);
        if code_path == "old" {
            // The old path lists tag directories exactly as docker-registry does.
            assert_eq!(listed, list_tags(reference.port, path), "{path} tags");
        } else {
            // The new path lists the tags that point at a manifest.
            assert_eq!(listed, served, "{path} tags");
        }
    }
    pulled
}

/// An OCI manifest and an OCI index asked for by a client that accepts only Docker's types: both
/// registries refuse them with `MANIFEST_UNKNOWN` (docker-registry serves OCI content only to a
/// client that lists its type).
async fn unaccepted_oci_is_refused_alike(reference: u16, ferry: u16) {
    let docker_only = "application/vnd.docker.distribution.manifest.v2+json, \
        application/vnd.docker.distribution.manifest.list.v2+json";
    for (path, kind) in [
        ("/v2/group-a/project-1/app/manifests/v1", "OCI manifest"),
        ("/v2/group-b/project-3/multi/manifests/v1", "OCI index"),
    ] {
        for port in [reference, ferry] {
            let answer = http_request(port, "GET", path, docker_only)
                .await
                .expect("an answer");
            assert_eq!(answer.status, 404, "{kind} from :{port}: {}", answer.body);
            assert!(
                answer.body.contains("MANIFEST_UNKNOWN"),
                "{kind} from :{port}: {}",
                answer.body
            );
        }
    }
}

/// Pulls every tag again from Ferry and expects what `before` holds.
fn pull_again(port: u16, before: &BTreeMap<(String, String), Pulled>) {
    let work = tempfile::tempdir().expect("pull directory");
    for ((path, tag), expected) in before {
        assert_eq!(
            &pull(port, path, tag, work.path()),
            expected,
            "{path}:{tag}"
        );
    }
}

/// Every page of `/v2/_catalog` with `n` entries a page, following `Link`.
async fn catalog(port: u16, n: usize) -> Vec<String> {
    let mut names = Vec::new();
    let mut next = Some(format!("/v2/_catalog?n={n}"));
    while let Some(path) = next.take() {
        let response = http_request(port, "GET", &path, "application/json")
            .await
            .expect("catalog answers");
        assert_eq!(response.status, 200, "{path}: {}", response.body);
        let page: serde_json::Value = serde_json::from_str(&response.body).expect("JSON");
        let page: Vec<String> = page["repositories"]
            .as_array()
            .expect("repositories")
            .iter()
            .map(|name| name.as_str().expect("name").to_owned())
            .collect();
        assert!(page.len() <= n);
        names.extend(page);
        next = response.header("link").map(|link| {
            link.trim_start_matches('<')
                .split_once('>')
                .expect("Link: <url>; rel=\"next\"")
                .0
                .to_owned()
        });
    }
    names
}

async fn migrate(cluster: &Cluster, expected: usize) {
    let mut client = cluster.client().await;
    let inventory = ferry_tests::run_inventory(&mut client).await;
    assert_eq!(inventory.repositories_registered, expected as u64);
    let summary = cluster.migrate(Duration::from_secs(180)).await;
    assert_eq!(
        ferry_tests::state_count(&summary, "import_done"),
        expected as u64,
        "{summary:?}"
    );
}

/// Proves the endpoint against docker-registry; returns what the new path served.
async fn serve_and_prove(
    sample: &SampleRegistry,
    cluster: &Cluster,
) -> BTreeMap<(String, String), Pulled> {
    let reference = RegistryServer::start(&sample.root()).await;
    let ferry = cluster.importer_registry_ports[0];
    let other = cluster.importer_registry_ports[1];

    let base = http_request(ferry, "GET", "/v2/", "*/*")
        .await
        .expect("/v2/");
    assert_eq!(base.status, 200);
    assert_eq!(
        base.header("docker-distribution-api-version"),
        Some("registry/2.0")
    );

    // Before the migration: the old path serves what docker-registry serves.
    pull_everything_alike(sample, &reference, ferry, "old").await;
    unaccepted_oci_is_refused_alike(reference.port, ferry).await;
    let expected: BTreeSet<String> = sample
        .repositories()
        .iter()
        .map(|r| r["path"].as_str().expect("path").to_owned())
        .collect();
    for n in [1, 3, 1000] {
        let names = catalog(ferry, n).await;
        assert_eq!(names.len(), expected.len(), "n={n}: {names:?}");
        assert_eq!(
            names.into_iter().collect::<BTreeSet<_>>(),
            expected,
            "n={n}"
        );
    }

    // After it: the new path serves the same, from any importer.
    migrate(cluster, expected.len()).await;
    let served = pull_everything_alike(sample, &reference, ferry, "new").await;
    unaccepted_oci_is_refused_alike(reference.port, ferry).await;
    pull_everything_alike(sample, &reference, other, "new").await;
    assert_eq!(
        catalog(other, 2).await.into_iter().collect::<BTreeSet<_>>(),
        expected
    );

    // Writes are refused; unknown names and digests get the specification's codes.
    let put = http_request(
        ferry,
        "PUT",
        "/v2/group-a/project-1/app/manifests/v9",
        "*/*",
    )
    .await
    .expect("answer");
    assert_eq!(put.status, 405);
    assert!(put.body.contains("UNSUPPORTED"), "{}", put.body);
    let upload = http_request(
        ferry,
        "POST",
        "/v2/group-a/project-1/app/blobs/uploads/",
        "*/*",
    )
    .await
    .expect("answer");
    assert_eq!(upload.status, 405);
    let unknown = http_request(ferry, "GET", "/v2/no/such/manifests/v1", MANIFEST_TYPES)
        .await
        .expect("answer");
    assert_eq!(unknown.status, 404);
    assert!(
        unknown.body.contains("MANIFEST_UNKNOWN"),
        "{}",
        unknown.body
    );
    let blob = format!("/v2/group-a/project-1/app/blobs/sha256:{}", "0".repeat(64));
    let missing = http_request(ferry, "HEAD", &blob, "*/*")
        .await
        .expect("answer");
    assert_eq!(missing.status, 404);
    assert_eq!(missing.header("ferry-code-path"), Some("new"));
    let bad = http_request(
        ferry,
        "GET",
        "/v2/group-a/project-1/app/blobs/sha256:zz",
        "*/*",
    )
    .await
    .expect("answer");
    assert_eq!(bad.status, 400);
    assert!(bad.body.contains("DIGEST_INVALID"), "{}", bad.body);
    let invalid = http_request(ferry, "GET", "/v2/Group/tags/list", "*/*")
        .await
        .expect("answer");
    assert_eq!(invalid.status, 400);
    assert!(invalid.body.contains("NAME_INVALID"), "{}", invalid.body);

    // The metrics count both paths: the dashboard's traffic share of the new path.
    let metrics = scrape(cluster.importer_metrics_ports[0]).await;
    for code_path in ["old", "new"] {
        let series = format!(
            "ferry_registry_requests_total{{code_path=\"{code_path}\",endpoint=\"blob\",code=\"200\"}}"
        );
        let answered = metric(&metrics, &series).unwrap_or(0.0);
        assert!(answered > 0.0, "{series} is {answered}");
    }
    served
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standard_clients_pull_the_same_from_ferry_before_and_after_the_migration() {
    let sample = SampleRegistry::build(false);
    let cluster = Cluster::start(&sample.root(), 2).await;
    let served = serve_and_prove(&sample, &cluster).await;
    // The new path reads the copies under gitlab/: without the old layout's blobs, every tag
    // still pulls the same (the local driver's copies are hard links, so they keep their bytes).
    let old_blobs = sample.root().join("docker/registry/v2/blobs");
    std::fs::rename(&old_blobs, sample.root().join("old-blobs-moved-away")).expect("move");
    pull_again(cluster.importer_registry_ports[0], &served);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standard_clients_pull_the_same_from_ferry_over_a_gcs_bucket() {
    std::env::var("STORAGE_EMULATOR_HOST")
        .expect("STORAGE_EMULATOR_HOST must point at fake-gcs-server: run `make test`");
    let sample = SampleRegistry::build(false);
    let bucket = GcsBucket::new().await;
    bucket.upload_dir(&sample.root()).await;
    let cluster = Cluster::start_with_storage(format!("gs://{}", bucket.name()), 2).await;
    serve_and_prove(&sample, &cluster).await;
}

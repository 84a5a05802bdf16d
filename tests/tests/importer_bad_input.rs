//! Bad source data fails one repository's import with a precise reason, commits nothing of it,
//! and leaves every other repository alone. Runs the importer against real PostgreSQL.

use ferry_importer::error::ApiError;
use ferry_importer::service::ImportService;
use ferry_proto::common::v1::{ImportType, MigrationStatus};
use ferry_proto::importer::v1::StartOutcome;
use ferry_shared::error::ErrorCode;
use ferry_tests::ImporterHarness;

async fn assert_fails(h: &ImporterHarness, path: &str, expected_reason: &str) {
    let (status, error) = h.run(path, ImportType::Pre).await;
    assert_eq!(status, "pre_import_failed", "{path}");
    let error = error.expect("a reason is recorded");
    assert!(
        error.contains(expected_reason),
        "{path}: reason {error:?} should contain {expected_reason:?}"
    );
    for table in ["manifests", "repository_blobs", "tags"] {
        assert_eq!(
            h.count(table, path).await,
            0,
            "{path}: nothing committed in {table}"
        );
    }
}

#[tokio::test]
async fn each_kind_of_broken_data_fails_only_its_repository_with_a_reason() {
    let h = ImporterHarness::new().await;
    let layout = h.layout();
    layout.image("good/project/app", "v1", "good");

    layout.tag_link("bad/link/app", "v1", "not-a-digest");
    layout.image("bad/link/app", "v2", "link-neighbour");

    let not_json = layout.blob(b"{ this is not json");
    layout.link_revision("bad/json/app", &not_json);
    layout.tag_link("bad/json/app", "v1", &not_json);

    let real = layout.image("bad/mismatch/source", "v1", "mismatch");
    let wrong = format!("sha256:{}", "e".repeat(64));
    let payload = std::fs::read(h.root.join(format!(
        "docker/registry/v2/blobs/sha256/{}/{}/data",
        &real[7..9],
        &real[7..]
    )))
    .expect("manifest payload");
    layout.blob_at(&wrong, &payload);
    layout.link_revision("bad/mismatch/app", &wrong);
    layout.tag_link("bad/mismatch/app", "v1", &wrong);

    let config = layout.blob(br#"{"os":"linux"}"#);
    let absent_layer = format!("sha256:{}", "a".repeat(64));
    let manifest = layout.manifest((&config, 14), &[(&absent_layer, 10)]);
    for blob in [&config, &absent_layer] {
        layout.link_layer("bad/missing-layer/app", blob);
    }
    layout.link_revision("bad/missing-layer/app", &manifest);
    layout.tag_link("bad/missing-layer/app", "v1", &manifest);

    let corrupt_layer = format!("sha256:{}", "b".repeat(64));
    layout.blob_at(&corrupt_layer, b"these bytes hash to something else");
    let manifest = layout.manifest((&config, 14), &[(&corrupt_layer, 34)]);
    for blob in [&config, &corrupt_layer] {
        layout.link_layer("bad/corrupt-layer/app", blob);
    }
    layout.link_revision("bad/corrupt-layer/app", &manifest);
    layout.tag_link("bad/corrupt-layer/app", "v1", &manifest);

    // A config blob that is linked but missing from storage.
    let absent_config = format!("sha256:{}", "d".repeat(64));
    let manifest = layout.manifest((&absent_config, 20), &[]);
    layout.link_layer("bad/missing-config/app", &absent_config);
    layout.link_revision("bad/missing-config/app", &manifest);
    layout.tag_link("bad/missing-config/app", "v1", &manifest);

    // A manifest of an unknown media type, and one over the 4 MiB read limit.
    let unknown = layout.blob(br#"{"schemaVersion":2,"mediaType":"application/x-unknown"}"#);
    layout.link_revision("bad/unknown-type/app", &unknown);
    layout.tag_link("bad/unknown-type/app", "v1", &unknown);
    let huge = layout.blob(&vec![b' '; (4 << 20) + 1]);
    layout.link_revision("bad/huge/app", &huge);
    layout.tag_link("bad/huge/app", "v1", &huge);

    layout.image("bad/tag-name/app", "v1", "tag-name");
    layout.tag_link("bad/tag-name/app", "bad tag", &real);

    assert_fails(&h, "bad/link/app", "tag v1: broken current link").await;
    assert_fails(&h, "bad/json/app", "invalid manifest JSON").await;
    assert_fails(
        &h,
        "bad/mismatch/app",
        &format!("manifest {wrong}: stored content hashes to {real}"),
    )
    .await;
    assert_fails(
        &h,
        "bad/missing-layer/app",
        &format!("blob {absent_layer} referenced by manifest"),
    )
    .await;
    assert_fails(
        &h,
        "bad/corrupt-layer/app",
        &format!("blob {corrupt_layer} referenced by manifest"),
    )
    .await;
    assert_fails(&h, "bad/tag-name/app", "invalid tag name \"bad tag\"").await;
    assert_fails(
        &h,
        "bad/missing-config/app",
        &format!("blob {absent_config} referenced by manifest"),
    )
    .await;
    assert_fails(
        &h,
        "bad/unknown-type/app",
        "unknown manifest media type \"application/x-unknown\"",
    )
    .await;
    assert_fails(
        &h,
        "bad/huge/app",
        &format!("manifest {huge} is larger than the 4194304-byte limit"),
    )
    .await;
    let corrupt_hex = &corrupt_layer[7..];
    let copied = h.root.join(format!(
        "gitlab/docker/registry/v2/blobs/sha256/{}/{corrupt_hex}/data",
        &corrupt_hex[..2]
    ));
    assert!(
        !copied.exists(),
        "a corrupt blob is never published under gitlab/"
    );

    // The good repository, imported after all of that, goes through both steps.
    assert_eq!(
        h.run("good/project/app", ImportType::Pre).await.0,
        "pre_import_complete"
    );
    assert_eq!(
        h.count("tags", "good/project/app").await,
        0,
        "pre-import registers no tags"
    );
    assert_eq!(
        h.run("good/project/app", ImportType::Final).await.0,
        "import_complete"
    );
    assert_eq!(h.count("tags", "good/project/app").await, 1);
    assert_eq!(h.count("manifests", "good/project/app").await, 1);
}

fn code<T: std::fmt::Debug>(result: Result<T, ApiError>) -> ErrorCode {
    result.expect_err("the call must be refused").code()
}

#[tokio::test]
async fn start_import_answers_like_the_registry_import_api() {
    let h = ImporterHarness::new().await;
    h.layout().image("group/project/app", "v1", "codes");

    // Hostile or malformed paths never reach storage.
    for path in ["../etc", "group/../../x", "Group/App", "a//b", ""] {
        assert_eq!(
            code(h.importer.start_import(path, ImportType::Pre, 0, 0).await),
            ErrorCode::InvalidArgument,
            "{path:?}"
        );
    }
    assert_eq!(
        code(
            h.importer
                .start_import("group/project/app", ImportType::Unspecified, 0, 0)
                .await
        ),
        ErrorCode::InvalidArgument
    );
    // Not in old storage: 404.
    assert_eq!(
        code(
            h.importer
                .start_import("group/project/none", ImportType::Pre, 0, 0)
                .await
        ),
        ErrorCode::NotFound
    );
    // Final import before any pre-import: 424.
    assert_eq!(
        code(
            h.importer
                .start_import("group/project/app", ImportType::Final, 0, 0)
                .await
        ),
        ErrorCode::FailedPrecondition
    );
    assert_eq!(
        h.run("group/project/app", ImportType::Pre).await.0,
        "pre_import_complete"
    );
    assert_eq!(
        h.run("group/project/app", ImportType::Final).await.0,
        "import_complete"
    );
    // Already on the new platform: 200, nothing started.
    let again = h
        .importer
        .start_import("group/project/app", ImportType::Pre, 0, 0)
        .await
        .expect("start");
    assert_eq!(again.outcome(), StartOutcome::AlreadyImported);
    assert_eq!(
        again.status(),
        MigrationStatus::ImportComplete,
        "imported, not native"
    );
    // The row's answer comes before old storage's: gone from the old layout, still imported.
    std::fs::remove_dir_all(
        h.root
            .join("docker/registry/v2/repositories/group/project/app"),
    )
    .expect("remove from old storage");
    let gone = h
        .importer
        .start_import("group/project/app", ImportType::Pre, 0, 0)
        .await
        .expect("start");
    assert_eq!(gone.outcome(), StartOutcome::AlreadyImported);
    // A refused start leaves no row behind.
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM repositories WHERE path LIKE '%none'")
        .fetch_one(&h.pool)
        .await
        .expect("count");
    assert_eq!(rows, 0, "the starts of a missing repository created a row");
    // Status of an unknown repository: 404.
    assert_eq!(
        code(h.importer.import_status("group/project/none").await),
        ErrorCode::NotFound
    );
    let status = h
        .importer
        .import_status("group/project/app")
        .await
        .expect("status");
    assert_eq!(status.detail, "final import completed successfully");
}

#[tokio::test]
async fn a_failed_final_import_leaves_the_pre_import_and_no_tags() {
    let h = ImporterHarness::new().await;
    let layout = h.layout();
    layout.image("group/project/app", "v1", "first");
    assert_eq!(
        h.run("group/project/app", ImportType::Pre).await.0,
        "pre_import_complete"
    );
    // A tag added after the pre-import points at a manifest revision whose blob is missing.
    let missing = format!("sha256:{}", "c".repeat(64));
    layout.link_revision("group/project/app", &missing);
    layout.tag_link("group/project/app", "v2", &missing);
    let (status, error) = h.run("group/project/app", ImportType::Final).await;
    assert_eq!(status, "import_failed");
    assert!(error.expect("reason").contains(&missing));
    assert_eq!(
        h.count("tags", "group/project/app").await,
        0,
        "all tags or none"
    );
    assert_eq!(
        h.count("manifests", "group/project/app").await,
        1,
        "the pre-import's rows stay"
    );
}

/// Where the registry skipped rather than failed, so does the importer: a tagged manifest that
/// is not a revision of the repository, a schema 1 manifest and a manifest whose config is not
/// linked are skipped with their tags; a layer that is not linked is left out of its manifest.
#[tokio::test]
async fn what_the_registry_skipped_is_skipped_and_the_rest_imports() {
    let h = ImporterHarness::new().await;
    let layout = h.layout();
    let path = "group/project/skips";
    layout.image(path, "good", "kept");

    let (no_revision, _, _) = layout.image_parts(path, "no-revision", "no-revision");
    let hex = &no_revision[7..];
    std::fs::remove_file(h.root.join(format!(
        "docker/registry/v2/repositories/{path}/_manifests/revisions/sha256/{hex}/link"
    )))
    .expect("remove revision link");

    let schema1 = layout
        .blob(br#"{"schemaVersion":1,"name":"group/project/skips","tag":"old","fsLayers":[]}"#);
    layout.link_revision(path, &schema1);
    layout.tag_link(path, "schema1", &schema1);

    let (_, unlinked_config, _) = layout.image_parts(path, "unlinked-config", "unlinked-config");
    let hex = &unlinked_config[7..];
    std::fs::remove_file(h.root.join(format!(
        "docker/registry/v2/repositories/{path}/_layers/sha256/{hex}/link"
    )))
    .expect("remove config link");

    let (partial, _, unlinked_layer) = layout.image_parts(path, "partial", "unlinked-layer");
    let hex = &unlinked_layer[7..];
    std::fs::remove_file(h.root.join(format!(
        "docker/registry/v2/repositories/{path}/_layers/sha256/{hex}/link"
    )))
    .expect("remove layer link");

    assert_eq!(h.run(path, ImportType::Pre).await.0, "pre_import_complete");
    assert_eq!(h.run(path, ImportType::Final).await.0, "import_complete");
    let tags: Vec<String> = sqlx::query_scalar(
        "SELECT t.name FROM tags t JOIN repositories r ON r.id = t.repository_id WHERE r.path = $1 ORDER BY 1",
    )
    .bind(path)
    .fetch_all(&h.pool)
    .await
    .expect("tags");
    assert_eq!(tags, ["good", "partial"]);
    let layers: Vec<String> = sqlx::query_scalar(
        "SELECT l.digest FROM layers l JOIN manifests m ON m.id = l.manifest_id WHERE m.digest = $1",
    )
    .bind(&partial)
    .fetch_all(&h.pool)
    .await
    .expect("layers");
    assert!(
        layers.is_empty(),
        "the unlinked layer is left out: {layers:?}"
    );
    let hex = &unlinked_layer[7..];
    let copied = h.root.join(format!(
        "gitlab/docker/registry/v2/blobs/sha256/{}/{hex}/data",
        &hex[..2]
    ));
    assert!(!copied.exists(), "an unlinked layer is not copied");
    assert_eq!(h.count("manifests", path).await, 2, "good and partial");
}

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

#[tokio::test]
async fn indexes_with_missing_schema1_or_nested_children() {
    let h = ImporterHarness::new().await;
    let layout = h.layout();

    // A missing child fails the repository, naming the child and its index.
    let missing = format!("sha256:{}", "f".repeat(64));
    let (present, _, _) = layout.image_parts("idx/missing/app", "child", "present-child");
    let index = layout.index(
        "idx/missing/app",
        "v1",
        &[(&present, OCI_MANIFEST), (&missing, OCI_MANIFEST)],
    );
    assert_fails(
        &h,
        "idx/missing/app",
        &format!("manifest {missing} (index {index}) is missing from storage"),
    )
    .await;

    // An index inside an index fails.
    let (leaf, _, _) = layout.image_parts("idx/nested/app", "leaf", "nested-leaf");
    let inner = layout.index("idx/nested/app", "inner", &[(&leaf, OCI_MANIFEST)]);
    std::fs::remove_dir_all(
        h.root
            .join("docker/registry/v2/repositories/idx/nested/app/_manifests/tags/inner"),
    )
    .expect("untag the inner index");
    let outer = layout.index("idx/nested/app", "v1", &[(&inner, OCI_INDEX)]);
    assert_fails(
        &h,
        "idx/nested/app",
        &format!("manifest {outer}: nested index {inner} is not supported"),
    )
    .await;

    // A schema 1 child is skipped; the index is imported with its other child.
    let path = "idx/schema1/app";
    let (good, _, _) = layout.image_parts(path, "child", "schema1-sibling");
    let schema1 = layout.blob(br#"{"schemaVersion":1,"name":"idx/schema1/app","fsLayers":[]}"#);
    layout.link_revision(path, &schema1);
    let index = layout.index(
        path,
        "v1",
        &[(&good, OCI_MANIFEST), (&schema1, OCI_MANIFEST)],
    );
    assert_eq!(h.run(path, ImportType::Pre).await.0, "pre_import_complete");
    let children: Vec<String> = sqlx::query_scalar(
        "SELECT c.digest FROM manifest_references mr JOIN manifests p ON p.id = mr.parent_id \
         JOIN manifests c ON c.id = mr.child_id WHERE p.digest = $1",
    )
    .bind(&index)
    .fetch_all(&h.pool)
    .await
    .expect("references");
    assert_eq!(children, [good]);
}

//! Manifest kinds beyond plain images, imported as the registry imported them, against real
//! PostgreSQL: a buildx cache index, an OCI artifact, a config over 256 KB and a foreign
//! (non-distributable) layer.

use sqlx::Row;

use ferry_proto::common::v1::ImportType;
use ferry_tests::ImporterHarness;

async fn import(h: &ImporterHarness, path: &str) {
    assert_eq!(
        h.run(path, ImportType::Pre).await.0,
        "pre_import_complete",
        "{path}"
    );
    assert_eq!(
        h.run(path, ImportType::Final).await.0,
        "import_complete",
        "{path}"
    );
}

#[tokio::test]
async fn a_buildx_cache_index_is_imported_as_a_non_conformant_manifest() {
    let h = ImporterHarness::new().await;
    let layout = h.layout();
    let path = "group/project/cache";
    let layer = layout.blob(b"cached layer bytes");
    let cache_config = layout.blob(br#"{"layers":[{"blob":"x"}],"records":[]}"#);
    for blob in [&layer, &cache_config] {
        layout.link_layer(path, blob);
    }
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer, "size": 18},
            {"mediaType": "application/vnd.buildkit.cacheconfig.v0", "digest": cache_config, "size": 38},
        ],
    });
    let payload = serde_json::to_vec(&index).expect("json");
    let digest = layout.blob(&payload);
    layout.link_revision(path, &digest);
    layout.tag_link(path, "buildcache", &digest);
    import(&h, path).await;

    let row = sqlx::query(
        "SELECT media_type, non_conformant, payload, configuration_blob_digest, configuration_media_type \
         FROM manifests WHERE digest = $1",
    )
    .bind(&digest)
    .fetch_one(&h.pool)
    .await
    .expect("manifest");
    assert!(row.get::<bool, _>("non_conformant"));
    assert_eq!(
        row.get::<String, _>("media_type"),
        "application/vnd.oci.image.index.v1+json"
    );
    assert_eq!(
        row.get::<Vec<u8>, _>("payload"),
        payload,
        "the original payload is kept"
    );
    assert_eq!(
        row.get::<String, _>("configuration_blob_digest"),
        cache_config
    );
    assert_eq!(
        row.get::<String, _>("configuration_media_type"),
        "application/vnd.buildkit.cacheconfig.v0"
    );
    assert_eq!(h.count("layers", path).await, 1);
    assert_eq!(
        h.count("manifest_references", path).await,
        0,
        "its entries are blobs, not manifests"
    );
    assert!(h.copied(&layer) && h.copied(&cache_config));
}

#[tokio::test]
async fn artifacts_large_configs_and_foreign_layers() {
    let h = ImporterHarness::new().await;
    let layout = h.layout();

    // An OCI artifact: custom artifactType, the empty config, one layer.
    let path = "group/project/sbom";
    let empty = layout.blob(b"{}");
    let sbom = layout.blob(br#"{"spdxVersion":"SPDX-2.3"}"#);
    for blob in [&empty, &sbom] {
        layout.link_layer(path, blob);
    }
    let artifact = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": "application/spdx+json",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty, "size": 2},
        "layers": [{"mediaType": "application/spdx+json", "digest": sbom, "size": 26}],
    });
    let digest = layout.blob(&serde_json::to_vec(&artifact).expect("json"));
    layout.link_revision(path, &digest);
    layout.tag_link(path, "sbom", &digest);
    import(&h, path).await;
    let artifact_type: Option<String> =
        sqlx::query_scalar("SELECT artifact_type FROM manifests WHERE digest = $1")
            .bind(&digest)
            .fetch_one(&h.pool)
            .await
            .expect("manifest");
    assert_eq!(artifact_type.as_deref(), Some("application/spdx+json"));
    assert!(h.copied(&sbom));

    // A config over 256 KB keeps no payload but is copied; a foreign layer is registered, not copied.
    let path = "group/project/big";
    let big_config = format!(r#"{{"os":"linux","pad":"{}"}}"#, "x".repeat(300_000));
    let config = layout.blob(big_config.as_bytes());
    let layer = layout.blob(b"ordinary layer");
    let foreign = format!("sha256:{}", "9".repeat(64));
    for blob in [&config, &layer] {
        layout.link_layer(path, blob);
    }
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": config, "size": big_config.len()},
        "layers": [
            {"mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip", "digest": foreign, "size": 1000,
             "urls": ["https://example.invalid/layer"]},
            {"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "digest": layer, "size": 14},
        ],
    });
    let digest = layout.blob(&serde_json::to_vec(&manifest).expect("json"));
    layout.link_revision(path, &digest);
    layout.tag_link(path, "v1", &digest);
    import(&h, path).await;
    let row =
        sqlx::query("SELECT configuration_payload, total_size FROM manifests WHERE digest = $1")
            .bind(&digest)
            .fetch_one(&h.pool)
            .await
            .expect("manifest");
    assert!(
        row.get::<Option<Vec<u8>>, _>("configuration_payload")
            .is_none(),
        "payload over 256 KB not stored"
    );
    assert_eq!(
        row.get::<i64, _>("total_size"),
        (big_config.len() + 1000 + 14) as i64
    );
    assert!(h.copied(&config), "the large config blob is still copied");
    assert_eq!(
        h.count("layers", path).await,
        2,
        "the foreign layer is registered"
    );
    assert!(
        !h.copied(&foreign),
        "a foreign layer is never copied (it is not in the bucket)"
    );
    assert!(h.copied(&layer));
}

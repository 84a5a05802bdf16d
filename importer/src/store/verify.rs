//! What a verification reads from the metadata database: a migrated repository's tags, and its
//! manifests, their references and its blobs, a chunk of digests at a time.

use std::collections::{BTreeMap, BTreeSet};

use sqlx::Row;

use super::MetadataStore;

/// A registered manifest, as verification compares it with its source.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegisteredManifest {
    /// The payload exactly as registered.
    pub payload: Vec<u8>,
    /// An image's config digest.
    pub config: Option<String>,
    /// An image's layers: digest and size.
    pub layers: BTreeSet<(String, u64)>,
    /// An index's children's digests.
    pub children: BTreeSet<String>,
}

impl MetadataStore {
    /// Every tag of the repository with its manifest's digest.
    #[tracing::instrument(name = "db.tag_digests", skip_all, err(level = "warn"))]
    pub async fn tag_digests(
        &self,
        repository_id: i64,
    ) -> Result<BTreeMap<String, String>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT t.name, m.digest FROM tags t JOIN manifests m ON m.id = t.manifest_id \
             WHERE t.repository_id = $1",
        )
        .bind(repository_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|row| (row.get("name"), row.get("digest")))
            .collect())
    }

    /// The repository's manifests among `digests`, with their references (three statements,
    /// whatever the number of digests).
    #[tracing::instrument(name = "db.registered_manifest_details", skip_all, err(level = "warn"))]
    pub async fn registered_manifest_details(
        &self,
        repository_id: i64,
        digests: &[&str],
    ) -> Result<BTreeMap<String, RegisteredManifest>, sqlx::Error> {
        let mut found: BTreeMap<String, RegisteredManifest> = BTreeMap::new();
        let rows = sqlx::query(
            "SELECT digest, payload, configuration_blob_digest FROM manifests \
             WHERE repository_id = $1 AND digest = ANY($2)",
        )
        .bind(repository_id)
        .bind(digests)
        .fetch_all(&self.pool)
        .await?;
        for row in rows {
            found.insert(
                row.get("digest"),
                RegisteredManifest {
                    payload: row.get("payload"),
                    config: row.get("configuration_blob_digest"),
                    ..RegisteredManifest::default()
                },
            );
        }
        let layers = sqlx::query(
            "SELECT m.digest AS manifest, l.digest, l.size FROM layers l \
             JOIN manifests m ON m.id = l.manifest_id \
             WHERE m.repository_id = $1 AND m.digest = ANY($2)",
        )
        .bind(repository_id)
        .bind(digests)
        .fetch_all(&self.pool)
        .await?;
        for row in layers {
            let manifest: String = row.get("manifest");
            let size: i64 = row.get("size");
            if let Some(entry) = found.get_mut(&manifest) {
                let size = u64::try_from(size).unwrap_or(0);
                entry.layers.insert((row.get("digest"), size));
            }
        }
        let children = sqlx::query(
            "SELECT p.digest AS parent, c.digest AS child FROM manifest_references r \
             JOIN manifests p ON p.id = r.parent_id JOIN manifests c ON c.id = r.child_id \
             WHERE p.repository_id = $1 AND p.digest = ANY($2)",
        )
        .bind(repository_id)
        .bind(digests)
        .fetch_all(&self.pool)
        .await?;
        for row in children {
            let parent: String = row.get("parent");
            if let Some(entry) = found.get_mut(&parent) {
                entry.children.insert(row.get("child"));
            }
        }
        Ok(found)
    }

    /// The repository's registered blobs among `digests`, with their registered sizes.
    #[tracing::instrument(name = "db.registered_blob_sizes", skip_all, err(level = "warn"))]
    pub async fn registered_blob_sizes(
        &self,
        repository_id: i64,
        digests: &[&str],
    ) -> Result<BTreeMap<String, u64>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT b.digest, b.size FROM repository_blobs rb \
             JOIN blobs b ON b.digest = rb.blob_digest \
             WHERE rb.repository_id = $1 AND rb.blob_digest = ANY($2)",
        )
        .bind(repository_id)
        .bind(digests)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|row| {
                let size: i64 = row.get("size");
                (row.get("digest"), u64::try_from(size).unwrap_or(0))
            })
            .collect())
    }
}

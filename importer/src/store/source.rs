//! What a step asks the metadata database to spare requests to the bucket: blobs already copied
//! (by any repository's step), and the tag links its pre-import read.

use ferry_shared::ids::{Digest, RepositoryPath};

use super::MetadataStore;

/// A tag link a pre-import read, with the version of the link it read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadTagLink {
    /// The tag.
    pub tag: String,
    /// The digest its `current/link` held.
    pub digest: Digest,
    /// The link's version when it was read ([`ferry_shared::storage::ObjectMeta::version`]).
    pub version: String,
}

impl MetadataStore {
    /// Which of `digests` are registered as copied under `gitlab/`, with their registered
    /// sizes. A blob is registered only after its copy landed, so these need no copy.
    #[tracing::instrument(name = "db.copied_blobs", skip_all, err(level = "warn"))]
    pub async fn copied_blobs(&self, digests: &[&str]) -> Result<Vec<(String, i64)>, sqlx::Error> {
        if digests.is_empty() {
            return Ok(Vec::new());
        }
        sqlx::query_as("SELECT digest, size FROM blobs WHERE digest = ANY($1) AND copied")
            .bind(digests)
            .fetch_all(&self.pool)
            .await
    }

    /// The tag links the repository's last pre-import recorded (none after its final import).
    #[tracing::instrument(name = "db.read_tag_links", skip_all, err(level = "warn"))]
    pub async fn read_tag_links(
        &self,
        path: &RepositoryPath,
    ) -> Result<Vec<ReadTagLink>, sqlx::Error> {
        let rows: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT l.tag, l.digest, l.link_version FROM source_tag_links l \
             WHERE l.repository_id = (SELECT id FROM repositories WHERE path = $1)",
        )
        .bind(path.as_str())
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(tag, digest, version)| {
                let digest = Digest::parse(&digest).ok()?;
                Some(ReadTagLink {
                    tag,
                    digest,
                    version,
                })
            })
            .collect())
    }
}

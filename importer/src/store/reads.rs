//! What the registry endpoint reads from the metadata database: which path serves a repository,
//! and, for the new path, its tags, manifests and blobs.

use sqlx::Row;

use ferry_proto::common::v1::MigrationStatus;
use ferry_shared::ids::{Digest, RepositoryPath};

use super::MetadataStore;

/// A repository served from the metadata database: one whose migration completed, or that was
/// created on the new platform.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServedRepository {
    /// Its row's id.
    pub id: i64,
}

/// A manifest as registered: its payload byte for byte and how to label it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredManifest {
    /// The digest of `payload`.
    pub digest: String,
    /// The media type it was registered with.
    pub media_type: String,
    /// The payload exactly as pushed.
    pub payload: Vec<u8>,
}

impl MetadataStore {
    /// The repository's row id and status (`None`: no row).
    #[tracing::instrument(name = "db.repository_status", skip_all, err(level = "warn"))]
    pub async fn repository_status(
        &self,
        path: &RepositoryPath,
    ) -> Result<Option<(i64, Option<MigrationStatus>)>, sqlx::Error> {
        let row = sqlx::query("SELECT id, migration_status FROM repositories WHERE path = $1")
            .bind(path.as_str())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|row| {
            let status: &str = row.get("migration_status");
            (row.get("id"), MigrationStatus::from_db_str(status))
        }))
    }

    /// The repository if the new path serves it (`import_complete` or `native`), else `None`: a
    /// repository with no row, or one in any other state, is served from the old layout.
    #[tracing::instrument(name = "db.served_repository", skip_all, err(level = "warn"))]
    pub async fn served_repository(
        &self,
        path: &RepositoryPath,
    ) -> Result<Option<ServedRepository>, sqlx::Error> {
        let row = self.repository_status(path).await?;
        Ok(row.and_then(|(id, status)| {
            matches!(
                status,
                Some(MigrationStatus::ImportComplete | MigrationStatus::Native)
            )
            .then_some(ServedRepository { id })
        }))
    }

    /// The manifest `tag` points to in the repository.
    #[tracing::instrument(name = "db.tagged_manifest", skip_all, err(level = "warn"))]
    pub async fn tagged_manifest(
        &self,
        repository: ServedRepository,
        tag: &str,
    ) -> Result<Option<StoredManifest>, sqlx::Error> {
        let row = sqlx::query(
            "SELECT m.digest, m.media_type, m.payload FROM tags t \
             JOIN manifests m ON m.id = t.manifest_id \
             WHERE t.repository_id = $1 AND t.name = $2",
        )
        .bind(repository.id)
        .bind(tag)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(stored_manifest))
    }

    /// The repository's manifest of digest `digest`.
    #[tracing::instrument(name = "db.manifest_by_digest", skip_all, err(level = "warn"))]
    pub async fn manifest_by_digest(
        &self,
        repository: ServedRepository,
        digest: &Digest,
    ) -> Result<Option<StoredManifest>, sqlx::Error> {
        let row = sqlx::query(
            "SELECT digest, media_type, payload FROM manifests \
             WHERE repository_id = $1 AND digest = $2",
        )
        .bind(repository.id)
        .bind(digest.as_str())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(stored_manifest))
    }

    /// The size of blob `digest` if the repository may serve it.
    #[tracing::instrument(name = "db.repository_blob", skip_all, err(level = "warn"))]
    pub async fn repository_blob_size(
        &self,
        repository: ServedRepository,
        digest: &Digest,
    ) -> Result<Option<u64>, sqlx::Error> {
        let size: Option<i64> = sqlx::query_scalar(
            "SELECT b.size FROM repository_blobs rb JOIN blobs b ON b.digest = rb.blob_digest \
             WHERE rb.repository_id = $1 AND rb.blob_digest = $2",
        )
        .bind(repository.id)
        .bind(digest.as_str())
        .fetch_optional(&self.pool)
        .await?;
        Ok(size.map(|size| u64::try_from(size).unwrap_or(0)))
    }

    /// Up to `limit` of the repository's tag names after `after`, in byte order.
    #[tracing::instrument(name = "db.tag_names", skip_all, err(level = "warn"))]
    pub async fn tag_names(
        &self,
        repository: ServedRepository,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT name FROM tags WHERE repository_id = $1 AND name COLLATE \"C\" > $2 \
             ORDER BY name COLLATE \"C\" LIMIT $3",
        )
        .bind(repository.id)
        .bind(after.unwrap_or(""))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
    }

    /// Whether `path` was created on the new platform (`native`).
    #[tracing::instrument(name = "db.is_native", skip_all, err(level = "warn"))]
    pub async fn is_native(&self, path: &RepositoryPath) -> Result<bool, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM repositories \
                 WHERE path = $1 AND migration_status = 'native')",
        )
        .bind(path.as_str())
        .fetch_one(&self.pool)
        .await
    }

    /// Up to `limit` paths of repositories created on the new platform (`native`) after
    /// `after`, in byte order.
    #[tracing::instrument(name = "db.native_repositories", skip_all, err(level = "warn"))]
    pub async fn native_repositories(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT path FROM repositories WHERE migration_status = 'native' \
               AND path COLLATE \"C\" > $1 ORDER BY path COLLATE \"C\" LIMIT $2",
        )
        .bind(after.unwrap_or(""))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
    }
}

fn stored_manifest(row: sqlx::postgres::PgRow) -> StoredManifest {
    StoredManifest {
        digest: row.get("digest"),
        media_type: row.get("media_type"),
        payload: row.get("payload"),
    }
}

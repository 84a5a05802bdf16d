//! One import step's transaction: the chunks of a repository written one after the other, then
//! (in the final import) its tags, committed together or not at all.

use std::collections::{BTreeMap, HashMap, HashSet};

use std::sync::Arc;

use sqlx::{Postgres, Row, Transaction};
use tokio::sync::OwnedSemaphorePermit;

use ferry_proto::common::v1::MigrationStatus;
use ferry_shared::ids::Digest;
use ferry_shared::step::Step;

use super::{ClaimedStep, MetadataStore, to_i64};
use crate::plan::{Chunk, PlannedManifest};

/// What a step's transaction wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WrittenCounts {
    /// Manifests inserted (already registered ones are not counted).
    pub manifests: u64,
    /// Blobs newly linked to the repository.
    pub blobs: u64,
    /// Tags created or moved.
    pub tags: u64,
}

/// The result of trying to commit a step.
#[derive(Debug, Clone)]
pub enum CommitOutcome {
    /// Everything was written and the status set to complete.
    Committed(WrittenCounts),
    /// The repository's status was no longer the step's in-progress status (canceled); nothing
    /// was written.
    Superseded(MigrationStatus),
    /// The tags written differ from the expected ones; nothing was written. Says how.
    TagsDiffer(String),
}

/// A step's open transaction. Dropping it without [`StepCommit::finish`] writes nothing.
///
/// It takes no lock on the repository's row until it finishes: the inserts hold only the key
/// share lock of their foreign keys, so a cancellation (which changes the status, not the key)
/// goes through at once while chunks are still being written, and the step then finds itself
/// superseded.
#[derive(Debug)]
pub struct StepCommit {
    tx: Transaction<'static, Postgres>,
    /// The step's turn among the transactions the pool allows open at once.
    _turn: OwnedSemaphorePermit,
    repository_id: i64,
    step: Step,
    written: WrittenCounts,
}

impl MetadataStore {
    /// Opens the transaction of the step `claimed` (as `begin_step` returned it).
    #[tracing::instrument(name = "db.begin_commit", skip_all, err(level = "warn"))]
    pub async fn begin_commit(&self, claimed: ClaimedStep) -> Result<StepCommit, sqlx::Error> {
        let turn = Arc::clone(&self.commits)
            .acquire_owned()
            .await
            .map_err(|_| sqlx::Error::PoolClosed)?;
        // Begun in a task of its own: a step stopped while its `BEGIN` is on the way would
        // otherwise hand the connection back to the pool inside a transaction nobody ends.
        let pool = self.pool.clone();
        let begin = tokio::spawn(async move { pool.begin().await });
        let tx = begin.await.map_err(|_| sqlx::Error::WorkerCrashed)??;
        Ok(StepCommit {
            tx,
            _turn: turn,
            repository_id: claimed.repository_id,
            step: claimed.step,
            written: WrittenCounts::default(),
        })
    }
}

impl StepCommit {
    /// Registers a chunk's blobs, then its manifests with their layers and index references:
    /// four statements whatever the chunk's size. Rows already there are left alone (no dead
    /// tuples from no-op updates), and so are the layers and references of manifests already
    /// registered (they were written with them).
    #[tracing::instrument(name = "db.write_chunk", skip_all, err(level = "warn"))]
    pub async fn write_chunk(&mut self, chunk: &Chunk) -> Result<(), sqlx::Error> {
        self.write_blobs(chunk).await?;
        let mut seen = HashSet::new();
        let manifests: Vec<&PlannedManifest> = chunk
            .manifests
            .iter()
            .filter(|m| seen.insert(&m.digest))
            .collect();
        if manifests.is_empty() {
            return Ok(());
        }
        let inserted = self.insert_manifests(&manifests).await?;
        self.written.manifests += inserted.len() as u64;
        let (mut layer_manifests, mut layer_digests, mut layer_sizes, mut layer_types) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut parents, mut children) = (Vec::new(), Vec::new());
        for manifest in &manifests {
            let Some(&manifest_id) = inserted.get(manifest.digest.as_str()) else {
                continue;
            };
            for layer in &manifest.layers {
                layer_manifests.push(manifest_id);
                layer_digests.push(layer.digest.as_str());
                layer_sizes.push(to_i64(layer.size));
                layer_types.push(layer.media_type.as_str());
            }
            for child in &manifest.children {
                parents.push(manifest_id);
                children.push(child.as_str());
            }
        }
        let repository_id = self.repository_id;
        if !layer_manifests.is_empty() {
            sqlx::query(
                "INSERT INTO layers (repository_id, manifest_id, digest, size, media_type) \
                 SELECT $1, * FROM UNNEST($2::bigint[], $3::text[], $4::bigint[], $5::text[]) \
                 ON CONFLICT (manifest_id, digest) DO NOTHING",
            )
            .bind(repository_id)
            .bind(&layer_manifests)
            .bind(&layer_digests)
            .bind(&layer_sizes)
            .bind(&layer_types)
            .execute(&mut *self.tx)
            .await?;
        }
        if !parents.is_empty() {
            // A child may have been registered by an earlier chunk or step: look it up by digest.
            sqlx::query(
                "INSERT INTO manifest_references (repository_id, parent_id, child_id) \
                 SELECT $1, u.parent, m.id FROM UNNEST($2::bigint[], $3::text[]) AS u(parent, child) \
                 JOIN manifests m ON m.repository_id = $1 AND m.digest = u.child \
                 ON CONFLICT DO NOTHING",
            )
            .bind(repository_id)
            .bind(&parents)
            .bind(&children)
            .execute(&mut *self.tx)
            .await?;
        }
        Ok(())
    }

    async fn write_blobs(&mut self, chunk: &Chunk) -> Result<(), sqlx::Error> {
        if chunk.blobs.is_empty() {
            return Ok(());
        }
        let digests: Vec<&str> = chunk.blobs.keys().map(Digest::as_str).collect();
        let sizes: Vec<i64> = chunk.blobs.values().map(|b| to_i64(b.size)).collect();
        let media_types: Vec<&str> = chunk
            .blobs
            .values()
            .map(|b| b.media_type.as_str())
            .collect();
        // Every blob to copy was copied (or found copied) before its chunk is written.
        let copied: Vec<bool> = chunk.blobs.values().map(|b| b.copy).collect();
        // One statement: the foreign key checks of `repository_blobs` run at its end and see
        // the blobs its first part inserted.
        let linked = sqlx::query(
            "WITH new_blobs AS ( \
                 INSERT INTO blobs (digest, size, media_type, copied) \
                 SELECT * FROM UNNEST($2::text[], $3::bigint[], $4::text[], $5::boolean[]) \
                 ON CONFLICT (digest) DO NOTHING) \
             INSERT INTO repository_blobs (repository_id, blob_digest) \
             SELECT $1, digest FROM UNNEST($2::text[]) AS digest ON CONFLICT DO NOTHING",
        )
        .bind(self.repository_id)
        .bind(&digests)
        .bind(&sizes)
        .bind(&media_types)
        .bind(&copied)
        .execute(&mut *self.tx)
        .await?;
        self.written.blobs += linked.rows_affected();
        Ok(())
    }

    /// Inserts the manifests not registered yet; returns the new ones' ids by digest.
    async fn insert_manifests(
        &mut self,
        manifests: &[&PlannedManifest],
    ) -> Result<HashMap<String, i64>, sqlx::Error> {
        let rows: Vec<(i64, String)> = sqlx::query_as(
            "INSERT INTO manifests (repository_id, digest, media_type, schema_version, payload, \
                 configuration_media_type, configuration_blob_digest, configuration_payload, total_size, \
                 non_conformant, artifact_type) \
             SELECT $1, * FROM UNNEST($2::text[], $3::text[], $4::integer[], $5::bytea[], $6::text[], \
                 $7::text[], $8::bytea[], $9::bigint[], $10::boolean[], $11::text[]) \
             ON CONFLICT (repository_id, digest) DO NOTHING RETURNING id, digest",
        )
        .bind(self.repository_id)
        .bind(manifests.iter().map(|m| m.digest.as_str()).collect::<Vec<_>>())
        .bind(manifests.iter().map(|m| m.media_type.as_str()).collect::<Vec<_>>())
        .bind(manifests.iter().map(|m| m.schema_version).collect::<Vec<_>>())
        .bind(manifests.iter().map(|m| &m.payload[..]).collect::<Vec<_>>())
        .bind(
            manifests
                .iter()
                .map(|m| m.config.as_ref().map(|(d, _)| d.media_type.as_str()))
                .collect::<Vec<_>>(),
        )
        .bind(
            manifests
                .iter()
                .map(|m| m.config.as_ref().map(|(d, _)| d.digest.as_str()))
                .collect::<Vec<_>>(),
        )
        .bind(
            manifests
                .iter()
                .map(|m| m.config.as_ref().and_then(|(_, p)| p.as_deref()))
                .collect::<Vec<_>>(),
        )
        .bind(manifests.iter().map(|m| to_i64(m.total_size)).collect::<Vec<_>>())
        .bind(manifests.iter().map(|m| m.non_conformant).collect::<Vec<_>>())
        .bind(
            manifests
                .iter()
                .map(|m| m.artifact_type.as_deref())
                .collect::<Vec<_>>(),
        )
        .fetch_all(&mut *self.tx)
        .await?;
        Ok(rows.into_iter().map(|(id, digest)| (digest, id)).collect())
    }

    /// Points each tag at its manifest (registered by this step or an earlier one), creating or
    /// moving it. A tag whose manifest is not registered is not written.
    #[tracing::instrument(name = "db.write_tags", skip_all, err(level = "warn"))]
    pub async fn write_tags(&mut self, tags: &[(&str, &Digest)]) -> Result<(), sqlx::Error> {
        if tags.is_empty() {
            return Ok(());
        }
        let (names, digests): (Vec<&str>, Vec<&str>) = tags
            .iter()
            .map(|(name, digest)| (*name, digest.as_str()))
            .unzip();
        let result = sqlx::query(
            "INSERT INTO tags (repository_id, name, manifest_id) \
             SELECT $1, u.name, m.id FROM UNNEST($2::text[], $3::text[]) AS u(name, digest) \
             JOIN manifests m ON m.repository_id = $1 AND m.digest = u.digest \
             ON CONFLICT (repository_id, name) DO UPDATE \
                 SET manifest_id = EXCLUDED.manifest_id, updated_at = now() \
                 WHERE tags.manifest_id <> EXCLUDED.manifest_id",
        )
        .bind(self.repository_id)
        .bind(&names)
        .bind(&digests)
        .execute(&mut *self.tx)
        .await?;
        self.written.tags += result.rows_affected();
        Ok(())
    }

    /// Records the tag links this pre-import read, with their versions, for its final import
    /// (replacing an earlier pre-import's record).
    #[tracing::instrument(name = "db.record_tag_links", skip_all, err(level = "warn"))]
    pub async fn record_tag_links(
        &mut self,
        links: &[(&str, &Digest, &str)],
    ) -> Result<(), sqlx::Error> {
        self.forget_tag_links().await?;
        if links.is_empty() {
            return Ok(());
        }
        let tags: Vec<&str> = links.iter().map(|link| link.0).collect();
        let digests: Vec<&str> = links.iter().map(|link| link.1.as_str()).collect();
        let versions: Vec<&str> = links.iter().map(|link| link.2).collect();
        sqlx::query(
            "INSERT INTO source_tag_links (repository_id, tag, digest, link_version) \
             SELECT $1, * FROM UNNEST($2::text[], $3::text[], $4::text[])",
        )
        .bind(self.repository_id)
        .bind(&tags)
        .bind(&digests)
        .bind(&versions)
        .execute(&mut *self.tx)
        .await?;
        Ok(())
    }

    /// Drops the recorded tag links (the final import has used them).
    #[tracing::instrument(name = "db.forget_tag_links", skip_all, err(level = "warn"))]
    pub async fn forget_tag_links(&mut self) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM source_tag_links WHERE repository_id = $1")
            .bind(self.repository_id)
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    /// Sets the status to `complete` and commits, only while the repository is still
    /// `in_progress` and, with `expected_tags` (the final import), only if its tags are then
    /// exactly `expected_tags`. Otherwise rolls everything back.
    #[tracing::instrument(name = "db.commit_step", skip_all, err(level = "warn"))]
    pub async fn finish(
        mut self,
        in_progress: MigrationStatus,
        complete: MigrationStatus,
        expected_tags: Option<&BTreeMap<String, Digest>>,
    ) -> Result<CommitOutcome, sqlx::Error> {
        // The status moves first: the row stays locked until the commit or rollback. Only the
        // step that still holds the repository commits: a canceled step, or one a newer step
        // took over (even into the same status), is superseded.
        let completed = sqlx::query(
            "UPDATE repositories SET migration_status = $3, migration_error = NULL, updated_at = now() \
             WHERE id = $1 AND migration_status = $2 AND migration_step = $4",
        )
        .bind(self.repository_id)
        .bind(in_progress.as_db_str())
        .bind(complete.as_db_str())
        .bind(self.step.db())
        .execute(&mut *self.tx)
        .await?;
        if completed.rows_affected() == 0 {
            let status: String =
                sqlx::query_scalar("SELECT migration_status FROM repositories WHERE id = $1")
                    .bind(self.repository_id)
                    .fetch_one(&mut *self.tx)
                    .await?;
            self.tx.rollback().await?;
            let status = MigrationStatus::from_db_str(&status).unwrap_or_default();
            return Ok(CommitOutcome::Superseded(status));
        }
        if let Some(expected) = expected_tags {
            let written = self.repository_tags().await?;
            if let Some(difference) = describe_difference(expected, &written) {
                self.tx.rollback().await?;
                return Ok(CommitOutcome::TagsDiffer(difference));
            }
        }
        self.tx.commit().await?;
        Ok(CommitOutcome::Committed(self.written))
    }

    async fn repository_tags(&mut self) -> Result<BTreeMap<String, String>, sqlx::Error> {
        // Each tag's manifest by its primary key, never a join: a join's plan cached while the
        // tables were small (a migration's first minute, before autovacuum analyzes them) scans
        // every manifest for each repository.
        let rows = sqlx::query(
            "SELECT t.name, (SELECT m.digest FROM manifests m WHERE m.id = t.manifest_id) AS digest \
             FROM tags t WHERE t.repository_id = $1",
        )
        .bind(self.repository_id)
        .fetch_all(&mut *self.tx)
        .await?;
        Ok(rows
            .into_iter()
            .map(|row| (row.get("name"), row.get("digest")))
            .collect())
    }
}

/// The first difference between the source's tags and the database's, in words.
fn describe_difference(
    expected: &BTreeMap<String, Digest>,
    written: &BTreeMap<String, String>,
) -> Option<String> {
    for (tag, digest) in expected {
        match written.get(tag) {
            None => {
                return Some(format!(
                    "tag {tag} ({digest}) is in storage but not in the database"
                ));
            }
            Some(found) if found != digest.as_str() => {
                return Some(format!(
                    "tag {tag} is {found} in the database but {digest} in storage"
                ));
            }
            Some(_) => {}
        }
    }
    written
        .keys()
        .find(|tag| !expected.contains_key(*tag))
        .map(|tag| format!("tag {tag} is in the database but no longer in storage"))
}

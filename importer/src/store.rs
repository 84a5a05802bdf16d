//! The metadata database: every SQL statement the importer runs.

use std::collections::{BTreeMap, HashMap};

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Postgres, Row, Transaction};

use ferry_proto::common::v1::MigrationStatus;
use ferry_shared::ids::{Digest, RepositoryPath};

use crate::plan::ImportPlan;

/// Embedded migrations of the metadata database.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/registry");

/// A repository's row, as the import API needs it.
#[derive(Debug, Clone)]
pub struct RepositoryRow {
    /// `migration_status`.
    pub status: MigrationStatus,
    /// `migration_error`.
    pub error: Option<String>,
    /// Seconds since `updated_at`.
    pub age_seconds: f64,
    /// The highest scheduler fencing token a step of it was started with.
    pub fence: u64,
}

/// A repository as the listing APIs return it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ListedRepository {
    /// Its id (the created-since keyset's tie-breaker).
    pub id: i64,
    /// Its path.
    pub path: String,
    /// When its row was created.
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// When its row last changed.
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

/// Repositories with at least one tag.
const TAGGED: &str = "EXISTS (SELECT 1 FROM tags t WHERE t.repository_id = r.id)";

/// What a committed step registered.
#[derive(Debug, Clone, Copy, Default)]
pub struct CommitCounts {
    /// Manifests inserted (already registered ones are not counted).
    pub manifests: u64,
    /// Tags created or moved.
    pub tags: u64,
}

/// The result of trying to commit a step.
#[derive(Debug, Clone)]
pub enum CommitOutcome {
    /// Everything was written and the status set to complete.
    Committed(CommitCounts),
    /// The repository's status was no longer the step's in-progress status (canceled); nothing
    /// was written.
    Superseded(MigrationStatus),
    /// The tags written differ from the expected ones; nothing was written. Says how.
    TagsDiffer(String),
}

/// The metadata database.
#[derive(Debug, Clone)]
pub struct MetadataStore {
    pool: PgPool,
}

impl MetadataStore {
    /// Connects with a pool of at most `max_connections`.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, sqlx::Error> {
        // Every statement here is short; JIT compilation, which PostgreSQL's cost estimates
        // switch on over big tables, costs more than it saves (15-20 ms a listing call).
        let options = url.parse::<PgConnectOptions>()?.options([("jit", "off")]);
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .connect_with(options)
            .await?;
        Ok(Self { pool })
    }

    /// Reports the pool's connections to the database metrics.
    pub fn report_pool(&self) {
        ferry_shared::metrics::DB.pool(
            "metadata",
            self.pool.size(),
            u32::try_from(self.pool.num_idle()).unwrap_or(u32::MAX),
            self.pool.options().get_max_connections(),
        );
    }

    /// Applies pending migrations (safe to run from several replicas at once).
    pub async fn migrate(&self) -> Result<(), sqlx::migrate::MigrateError> {
        MIGRATOR.run(&self.pool).await
    }

    /// The repository's row, if it has one.
    #[tracing::instrument(name = "db.repository", skip_all, err(level = "warn"))]
    pub async fn repository(
        &self,
        path: &RepositoryPath,
    ) -> Result<Option<RepositoryRow>, sqlx::Error> {
        let row = sqlx::query(
            "SELECT migration_status, migration_error, migration_fence, \
                    EXTRACT(EPOCH FROM now() - updated_at)::float8 AS age \
             FROM repositories WHERE path = $1",
        )
        .bind(path.as_str())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|row| RepositoryRow {
            status: MigrationStatus::from_db_str(row.get("migration_status")).unwrap_or_default(),
            error: row.get("migration_error"),
            age_seconds: row.get("age"),
            fence: u64::try_from(row.get::<i64, _>("migration_fence")).unwrap_or(0),
        }))
    }

    /// Moves the repository to `in_progress` if its status is still `observed` (`None`: it has no
    /// row yet) and no start with a higher fencing token than `fence` was seen (0: unfenced, the
    /// one-shot mode). Returns false when another actor changed it first.
    #[tracing::instrument(name = "db.begin_step", skip_all, err(level = "warn"))]
    pub async fn begin_step(
        &self,
        path: &RepositoryPath,
        observed: Option<MigrationStatus>,
        in_progress: MigrationStatus,
        fence: u64,
    ) -> Result<bool, sqlx::Error> {
        let fence = i64::try_from(fence).unwrap_or(i64::MAX);
        let claimed = match observed {
            None => sqlx::query(
                "INSERT INTO repositories (path, name, migration_status, migration_fence) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (path) DO NOTHING RETURNING id",
            )
            .bind(path.as_str())
            .bind(path.name())
            .bind(in_progress.as_db_str())
            .bind(fence)
            .fetch_optional(&self.pool)
            .await?,
            Some(observed) => sqlx::query(
                "UPDATE repositories SET migration_status = $2, migration_error = NULL, updated_at = now(), \
                     migration_fence = GREATEST(migration_fence, $4) \
                 WHERE path = $1 AND migration_status = $3 AND ($4 = 0 OR migration_fence <= $4) \
                 RETURNING id",
            )
            .bind(path.as_str())
            .bind(in_progress.as_db_str())
            .bind(observed.as_db_str())
            .bind(fence)
            .fetch_optional(&self.pool)
            .await?,
        };
        Ok(claimed.is_some())
    }

    /// Whether any repository lives in the top-level namespace `namespace`.
    #[tracing::instrument(name = "db.namespace_exists", skip_all, err(level = "warn"))]
    pub async fn namespace_exists(&self, namespace: &str) -> Result<bool, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM repositories \
                 WHERE path COLLATE \"C\" >= $1 AND path COLLATE \"C\" < $1 || '0' \
                   AND (path COLLATE \"C\" = $1 OR path COLLATE \"C\" > $1 || '/'))",
        )
        .bind(namespace)
        .fetch_one(&self.pool)
        .await
    }

    /// Tagged repositories whose path is `path` or starts with `path/`, after `last`, in byte
    /// order. One index range, `[path, path || '0')` (`'0'` is the byte after `'/'`), filtered
    /// to `path` itself and the paths past `path/`: a plan PostgreSQL keeps when it caches the
    /// statement's generic plan (an `OR` of two ranges made it scan the whole index instead).
    #[tracing::instrument(name = "db.sub_repositories", skip_all, err(level = "warn"))]
    pub async fn sub_repositories(
        &self,
        path: &RepositoryPath,
        last: &str,
        limit: i64,
    ) -> Result<Vec<ListedRepository>, sqlx::Error> {
        sqlx::query_as(&format!(
            "SELECT r.id, r.path, r.created_at, r.updated_at FROM repositories r \
             WHERE r.path COLLATE \"C\" >= $1 AND r.path COLLATE \"C\" < $1 || '0' \
               AND (r.path COLLATE \"C\" = $1 OR r.path COLLATE \"C\" > $1 || '/') \
               AND r.path COLLATE \"C\" > $2 AND {TAGGED} \
             ORDER BY r.path COLLATE \"C\" LIMIT $3"
        ))
        .bind(path.as_str())
        .bind(last)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
    }

    /// [`Self::sub_repositories`] for many paths at once: `(index into paths, repository path)`
    /// in that order, after the `(index, path)` position `after`. One statement: each path is
    /// an index range scan; a `None` path matches nothing.
    #[tracing::instrument(name = "db.sub_repositories_batch", skip_all, err(level = "warn"))]
    pub async fn sub_repositories_batch(
        &self,
        paths: &[Option<&str>],
        after: Option<(i32, &str)>,
        limit: i64,
    ) -> Result<Vec<(i32, String)>, sqlx::Error> {
        let (after_index, after_path) = after.unwrap_or((-1, ""));
        sqlx::query_as(&format!(
            "SELECT (q.ord - 1)::int, s.path FROM UNNEST($1::text[]) WITH ORDINALITY AS q(p, ord) \
             CROSS JOIN LATERAL ( \
                 SELECT r.path FROM repositories r \
                 WHERE r.path COLLATE \"C\" >= q.p AND r.path COLLATE \"C\" < q.p || '0' \
                   AND (r.path COLLATE \"C\" = q.p OR r.path COLLATE \"C\" > q.p || '/') \
                   AND (q.ord - 1 > $2 OR r.path COLLATE \"C\" > $3) AND {TAGGED} \
                 ORDER BY r.path COLLATE \"C\" LIMIT $4) s \
             WHERE q.ord - 1 >= $2 \
             ORDER BY q.ord, s.path COLLATE \"C\" LIMIT $4"
        ))
        .bind(paths)
        .bind(i64::from(after_index))
        .bind(after_path)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
    }

    /// Tagged repositories created at or after `since`, after the `(created_at, id)` marker.
    #[tracing::instrument(name = "db.created_since", skip_all, err(level = "warn"))]
    pub async fn created_since(
        &self,
        since: chrono::DateTime<chrono::Utc>,
        after: Option<(chrono::DateTime<chrono::Utc>, i64)>,
        limit: i64,
    ) -> Result<Vec<ListedRepository>, sqlx::Error> {
        let (after_at, after_id) = after.unzip();
        sqlx::query_as(&format!(
            "SELECT r.id, r.path, r.created_at, r.updated_at FROM repositories r \
             WHERE r.created_at >= $1 \
               AND ($2::timestamptz IS NULL OR (r.created_at, r.id) > ($2, $3)) AND {TAGGED} \
             ORDER BY r.created_at, r.id LIMIT $4"
        ))
        .bind(since)
        .bind(after_at)
        .bind(after_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
    }

    /// Cancels the repository's step: `pre_import_canceled` from a pre-import in progress (or,
    /// forced, from a completed one), `import_canceled` otherwise. Without `force` only a step in
    /// progress is canceled; `force` cancels anything but `native`. Returns the new status, or the
    /// current one when nothing was canceled, or `None` when there is no row.
    #[tracing::instrument(name = "db.cancel", skip_all, err(level = "warn"))]
    pub async fn cancel(
        &self,
        path: &RepositoryPath,
        force: bool,
    ) -> Result<Option<(bool, MigrationStatus)>, sqlx::Error> {
        let canceled: Option<String> = sqlx::query_scalar(
            "UPDATE repositories SET \
                 migration_status = CASE WHEN migration_status IN ('pre_import_in_progress', 'pre_import_complete') \
                     THEN 'pre_import_canceled' ELSE 'import_canceled' END, \
                 migration_error = CASE WHEN $2 THEN 'forced cancelation' \
                     WHEN migration_status = 'pre_import_in_progress' THEN 'pre import canceled' \
                     ELSE 'final import canceled' END, \
                 updated_at = now() \
             WHERE path = $1 AND (migration_status IN ('pre_import_in_progress', 'import_in_progress') \
                                  OR ($2 AND migration_status <> 'native')) \
             RETURNING migration_status",
        )
        .bind(path.as_str())
        .bind(force)
        .fetch_optional(&self.pool)
        .await?;
        if let Some(status) = canceled {
            return Ok(Some((
                true,
                MigrationStatus::from_db_str(&status).unwrap_or_default(),
            )));
        }
        Ok(self.repository(path).await?.map(|row| (false, row.status)))
    }

    /// Which of `digests` the repository already has registered (and therefore copied: a blob is
    /// registered only after its copy landed).
    #[tracing::instrument(name = "db.registered_blobs", skip_all, err(level = "warn"))]
    pub async fn registered_blobs(
        &self,
        path: &RepositoryPath,
        digests: &[&str],
    ) -> Result<Vec<String>, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT rb.blob_digest FROM repository_blobs rb JOIN repositories r ON r.id = rb.repository_id \
             WHERE r.path = $1 AND rb.blob_digest = ANY($2)",
        )
        .bind(path.as_str())
        .bind(digests)
        .fetch_all(&self.pool)
        .await
    }

    /// Records a failed step, only if the repository is still `in_progress`. Returns whether it
    /// was recorded.
    #[tracing::instrument(name = "db.fail_step", skip_all, err(level = "warn"))]
    pub async fn fail_step(
        &self,
        path: &RepositoryPath,
        in_progress: MigrationStatus,
        failed: MigrationStatus,
        reason: &str,
    ) -> Result<bool, sqlx::Error> {
        let result = sqlx::query(
            "UPDATE repositories SET migration_status = $3, migration_error = $4, updated_at = now() \
             WHERE path = $1 AND migration_status = $2",
        )
        .bind(path.as_str())
        .bind(in_progress.as_db_str())
        .bind(failed.as_db_str())
        .bind(reason)
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected() == 1)
    }

    /// Writes everything `plan` holds and sets the status to `complete`, in one transaction that
    /// commits only while the repository is still `in_progress`. With `expected_tags` (the final
    /// import) it also writes the plan's tags and commits only if the repository's tags then are
    /// exactly `expected_tags`.
    #[tracing::instrument(name = "db.commit_step", skip_all, err(level = "warn"))]
    pub async fn commit_step(
        &self,
        path: &RepositoryPath,
        in_progress: MigrationStatus,
        complete: MigrationStatus,
        plan: &ImportPlan,
        expected_tags: Option<&BTreeMap<String, Digest>>,
    ) -> Result<CommitOutcome, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let row =
            sqlx::query("SELECT id, migration_status FROM repositories WHERE path = $1 FOR UPDATE")
                .bind(path.as_str())
                .fetch_one(&mut *tx)
                .await?;
        let repository_id: i64 = row.get("id");
        let status = MigrationStatus::from_db_str(row.get("migration_status")).unwrap_or_default();
        if status != in_progress {
            tx.rollback().await?;
            return Ok(CommitOutcome::Superseded(status));
        }
        insert_blobs(&mut tx, repository_id, plan).await?;
        let mut counts = CommitCounts::default();
        let manifest_ids = insert_manifests(&mut tx, repository_id, plan, &mut counts).await?;
        if let Some(expected) = expected_tags {
            counts.tags = insert_tags(&mut tx, repository_id, plan, &manifest_ids).await?;
            let written = repository_tags(&mut tx, repository_id).await?;
            if let Some(difference) = describe_difference(expected, &written) {
                tx.rollback().await?;
                return Ok(CommitOutcome::TagsDiffer(difference));
            }
        }
        sqlx::query(
            "UPDATE repositories SET migration_status = $2, migration_error = NULL, updated_at = now() \
             WHERE id = $1",
        )
        .bind(repository_id)
        .bind(complete.as_db_str())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(CommitOutcome::Committed(counts))
    }
}

async fn repository_tags(
    tx: &mut Transaction<'_, Postgres>,
    repository_id: i64,
) -> Result<BTreeMap<String, String>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT t.name, m.digest FROM tags t JOIN manifests m ON m.id = t.manifest_id \
         WHERE t.repository_id = $1",
    )
    .bind(repository_id)
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| (row.get("name"), row.get("digest")))
        .collect())
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

async fn insert_blobs(
    tx: &mut Transaction<'_, Postgres>,
    repository_id: i64,
    plan: &ImportPlan,
) -> Result<(), sqlx::Error> {
    let digests: Vec<&str> = plan.blobs.keys().map(Digest::as_str).collect();
    let sizes: Vec<i64> = plan.blobs.values().map(|b| to_i64(b.size)).collect();
    let media_types: Vec<&str> = plan.blobs.values().map(|b| b.media_type.as_str()).collect();
    sqlx::query(
        "INSERT INTO blobs (digest, size, media_type) \
         SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::text[]) ON CONFLICT (digest) DO NOTHING",
    )
    .bind(&digests)
    .bind(&sizes)
    .bind(&media_types)
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "INSERT INTO repository_blobs (repository_id, blob_digest) \
         SELECT $1, digest FROM UNNEST($2::text[]) AS digest ON CONFLICT DO NOTHING",
    )
    .bind(repository_id)
    .bind(&digests)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Registers the plan's manifests, their layers and their index references in three statements
/// (plus one to read the ids back), whatever the number of manifests. Existing rows are left
/// alone (no dead tuples from no-op updates); `counts.manifests` gets the new ones.
async fn insert_manifests(
    tx: &mut Transaction<'_, Postgres>,
    repository_id: i64,
    plan: &ImportPlan,
    counts: &mut CommitCounts,
) -> Result<HashMap<Digest, i64>, sqlx::Error> {
    let mut seen = std::collections::HashSet::new();
    let manifests: Vec<_> = plan
        .manifests
        .iter()
        .filter(|m| seen.insert(&m.digest))
        .collect();
    if manifests.is_empty() {
        return Ok(HashMap::new());
    }
    let digests: Vec<&str> = manifests.iter().map(|m| m.digest.as_str()).collect();
    let inserted = sqlx::query(
        "INSERT INTO manifests (repository_id, digest, media_type, schema_version, payload, \
             configuration_media_type, configuration_blob_digest, configuration_payload, total_size, \
             non_conformant, artifact_type) \
         SELECT $1, * FROM UNNEST($2::text[], $3::text[], $4::integer[], $5::bytea[], $6::text[], \
             $7::text[], $8::bytea[], $9::bigint[], $10::boolean[], $11::text[]) \
         ON CONFLICT (repository_id, digest) DO NOTHING",
    )
    .bind(repository_id)
    .bind(&digests)
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
    .execute(&mut **tx)
    .await?;
    counts.manifests += inserted.rows_affected();
    let rows: Vec<(i64, String)> = sqlx::query_as(
        "SELECT id, digest FROM manifests WHERE repository_id = $1 AND digest = ANY($2::text[])",
    )
    .bind(repository_id)
    .bind(&digests)
    .fetch_all(&mut **tx)
    .await?;
    let by_text: HashMap<String, i64> = rows.into_iter().map(|(id, d)| (d, id)).collect();
    let ids: HashMap<Digest, i64> = manifests
        .iter()
        .filter_map(|m| {
            by_text
                .get(m.digest.as_str())
                .map(|id| (m.digest.clone(), *id))
        })
        .collect();
    let (mut layer_manifests, mut layer_digests, mut layer_sizes, mut layer_types) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut parents, mut children) = (Vec::new(), Vec::new());
    for manifest in &manifests {
        let Some(&manifest_id) = ids.get(&manifest.digest) else {
            continue;
        };
        for layer in &manifest.layers {
            layer_manifests.push(manifest_id);
            layer_digests.push(layer.digest.as_str());
            layer_sizes.push(to_i64(layer.size));
            layer_types.push(layer.media_type.as_str());
        }
        for child in manifest.children.iter().filter_map(|c| ids.get(c)) {
            parents.push(manifest_id);
            children.push(*child);
        }
    }
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
        .execute(&mut **tx)
        .await?;
    }
    if !parents.is_empty() {
        sqlx::query(
            "INSERT INTO manifest_references (repository_id, parent_id, child_id) \
             SELECT $1, * FROM UNNEST($2::bigint[], $3::bigint[]) ON CONFLICT DO NOTHING",
        )
        .bind(repository_id)
        .bind(&parents)
        .bind(&children)
        .execute(&mut **tx)
        .await?;
    }
    Ok(ids)
}

async fn insert_tags(
    tx: &mut Transaction<'_, Postgres>,
    repository_id: i64,
    plan: &ImportPlan,
    manifest_ids: &HashMap<Digest, i64>,
) -> Result<u64, sqlx::Error> {
    let (names, ids): (Vec<&str>, Vec<i64>) = plan
        .tags
        .iter()
        .filter_map(|(name, digest)| manifest_ids.get(digest).map(|id| (name.as_str(), *id)))
        .unzip();
    let result = sqlx::query(
        "INSERT INTO tags (repository_id, name, manifest_id) \
         SELECT $1, * FROM UNNEST($2::text[], $3::bigint[]) \
         ON CONFLICT (repository_id, name) DO UPDATE \
             SET manifest_id = EXCLUDED.manifest_id, updated_at = now() \
             WHERE tags.manifest_id <> EXCLUDED.manifest_id",
    )
    .bind(repository_id)
    .bind(&names)
    .bind(&ids)
    .execute(&mut **tx)
    .await?;
    Ok(result.rows_affected())
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

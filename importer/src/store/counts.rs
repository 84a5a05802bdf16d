//! What the metadata database holds, for the `ferry_registered_*` gauges. Both counts stay cheap
//! whatever the size of `repositories`, so every importer can refresh them every minute.

use super::MetadataStore;

/// Top-level namespaces and repositories registered in the metadata database.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RegisteredCounts {
    /// Distinct first path segments of the registered repositories.
    pub namespaces: i64,
    /// Registered repositories (every row, whatever its migration status).
    pub repositories: i64,
}

/// Up to this many rows (by the planner's estimate) the repositories are counted exactly; above
/// it the estimate is used (`pg_class.reltuples`, as of the table's last `ANALYZE`, which
/// autovacuum repeats after every 10 % of changes): a `count(*)` reads an index entry per row.
pub const EXACT_REPOSITORY_COUNT_UP_TO: i64 = 100_000;

/// Counts the top-level namespaces with a loose index scan over `repositories_path_c_idx`: one
/// index probe per namespace (and per single-segment path), not a read of every row. In byte
/// order (`COLLATE "C"`) the paths under `n/` are contiguous and the first path after them is
/// at least `n0` (`0` is the byte after `/`), so each step jumps from a path `n/...` to the first
/// path from `n0` on, and from a single-segment path to the next path. A namespace can be
/// visited twice (`n`, then `n/...` after `n-x/...`), hence the `DISTINCT` over the visits.
const COUNT_NAMESPACES: &str = r#"
WITH RECURSIVE walk(path) AS (
    (SELECT path COLLATE "C" FROM repositories ORDER BY path COLLATE "C" LIMIT 1)
  UNION ALL
    SELECT (SELECT r.path COLLATE "C" FROM repositories r
             WHERE r.path COLLATE "C" > w.path
               AND r.path COLLATE "C" >= CASE WHEN strpos(w.path, '/') > 0
                                              THEN split_part(w.path, '/', 1) || '0'
                                              ELSE w.path END
             ORDER BY r.path COLLATE "C" LIMIT 1)
    FROM walk w
    WHERE w.path IS NOT NULL
)
SELECT count(DISTINCT split_part(path, '/', 1)) FROM walk"#;

impl MetadataStore {
    /// The registered namespaces and repositories: the namespaces exactly, the repositories
    /// exactly up to [`EXACT_REPOSITORY_COUNT_UP_TO`] and estimated above it.
    #[tracing::instrument(name = "db.registered_counts", skip_all, err(level = "warn"))]
    pub async fn registered_counts(&self) -> Result<RegisteredCounts, sqlx::Error> {
        let namespaces: i64 = sqlx::query_scalar(COUNT_NAMESPACES)
            .fetch_one(&self.pool)
            .await?;
        // -1: never analyzed.
        let estimate: i64 = sqlx::query_scalar(
            "SELECT reltuples::bigint FROM pg_class WHERE oid = 'repositories'::regclass",
        )
        .fetch_one(&self.pool)
        .await?;
        let repositories = if estimate > EXACT_REPOSITORY_COUNT_UP_TO {
            estimate
        } else {
            sqlx::query_scalar("SELECT count(*) FROM repositories")
                .fetch_one(&self.pool)
                .await?
        };
        Ok(RegisteredCounts {
            namespaces,
            repositories,
        })
    }
}

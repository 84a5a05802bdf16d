//! A repair-scan population at scale, written straight into both databases with
//! `generate_series`: `projects` projects known to the scheduler, two tagged repositories per
//! project in the registry's metadata database (the project's own path and `<project>/api`),
//! and a known set missing on the scheduler side.
//!
//! Project `i` (1-based) is `g{i % 100}/p{i}`. The scheduler lacks `<project>/api` when
//! `i % 7 == 0` and both repositories when `i % 50 == 0`. Every 1000th project has nothing in
//! the registry (its repositories were deleted there), and every 100th of the others also has
//! an untagged `<project>/untagged` in the registry, which must never count.

use sqlx::PgPool;

/// Repositories the registry has under project `i` that the scheduler lacks.
pub fn expected_missing(i: i64) -> i32 {
    if i % 1000 == 0 {
        0
    } else if i % 50 == 0 {
        2
    } else if i % 7 == 0 {
        1
    } else {
        0
    }
}

/// What a seeded population should scan to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RepairExpectation {
    /// Projects.
    pub projects: i64,
    /// Tagged repositories in the registry.
    pub registry_repositories: i64,
    /// Missing repositories, summed.
    pub missing: i64,
    /// Projects with at least one missing.
    pub projects_with_missing: i64,
}

/// The expectation for `projects` projects.
pub fn expectation(projects: i64) -> RepairExpectation {
    let missing: Vec<i32> = (1..=projects).map(expected_missing).collect();
    RepairExpectation {
        projects,
        registry_repositories: 2 * (projects - projects / 1000),
        missing: missing.iter().map(|m| i64::from(*m)).sum(),
        projects_with_missing: missing.iter().filter(|m| **m > 0).count() as i64,
    }
}

const PROJECT_PATH: &str = "'g' || (i % 100) || '/p' || i";

/// Runs `statements` in order, binding `projects` to those that take `$1`.
async fn run_all(db: &PgPool, statements: &[String], projects: i64, what: &str) {
    for statement in statements {
        let query = sqlx::query(statement);
        let query = if statement.contains("$1") {
            query.bind(projects)
        } else {
            query
        };
        query
            .execute(db)
            .await
            .unwrap_or_else(|e| panic!("seeding {what}: {e}"));
    }
}

/// Fills the scheduler database (migrated) with the projects and the repositories it knows.
pub async fn seed_scheduler(db: &PgPool, projects: i64) {
    let statements = [
        format!(
            "INSERT INTO projects (id, full_path) SELECT i, {PROJECT_PATH} \
             FROM generate_series(1, $1) i"
        ),
        "SELECT setval(pg_get_serial_sequence('projects', 'id'), $1)".to_owned(),
        format!(
            "INSERT INTO container_repositories (project_id, name, path) \
             SELECT i, '', {PROJECT_PATH} FROM generate_series(1, $1) i \
             WHERE i % 50 <> 0 OR i % 1000 = 0"
        ),
        format!(
            "INSERT INTO container_repositories (project_id, name, path) \
             SELECT i, 'api', {PROJECT_PATH} || '/api' FROM generate_series(1, $1) i \
             WHERE (i % 7 <> 0 AND i % 50 <> 0) OR i % 1000 = 0"
        ),
        "ANALYZE projects, container_repositories".to_owned(),
    ];
    run_all(db, &statements, projects, "the scheduler").await;
}

/// Fills the metadata database (migrated) with the registry's repositories, manifests and tags.
pub async fn seed_registry(db: &PgPool, projects: i64) {
    let statements = [
        format!(
            "INSERT INTO repositories (path, name) \
             SELECT {PROJECT_PATH} || s.suffix, s.name \
             FROM generate_series(1, $1) i, (VALUES ('', 'p'), ('/api', 'api')) s(suffix, name) \
             WHERE i % 1000 <> 0"
        ),
        format!(
            "INSERT INTO repositories (path, name) \
             SELECT {PROJECT_PATH} || '/untagged', 'untagged' FROM generate_series(1, $1) i \
             WHERE i % 100 = 0 AND i % 1000 <> 0"
        ),
        "INSERT INTO manifests (repository_id, digest, media_type, schema_version, payload) \
         SELECT r.id, 'sha256:' || lpad(to_hex(r.id), 64, '0'), \
             'application/vnd.oci.image.manifest.v1+json', 2, '\\x7b7d'::bytea \
         FROM repositories r WHERE r.name <> 'untagged'"
            .to_owned(),
        "INSERT INTO tags (repository_id, name, manifest_id) \
         SELECT m.repository_id, 'latest', m.id FROM manifests m"
            .to_owned(),
        "ANALYZE repositories, manifests, tags".to_owned(),
    ];
    run_all(db, &statements, projects, "the registry").await;
}

/// Project ids whose recorded analysis differs from [`expected_missing`] (or that have none,
/// or are not `completed`), at most 20.
pub async fn wrong_analyses(db: &PgPool, projects: i64) -> Vec<(i64, Option<i32>, Option<String>)> {
    let rows: Vec<(i64, Option<i32>, Option<String>)> = sqlx::query_as(
        "SELECT p.id, d.missing_count, d.status FROM projects p \
         LEFT JOIN container_registry_data_repair_details d ON d.project_id = p.id \
         ORDER BY p.id",
    )
    .fetch_all(db)
    .await
    .expect("analyses");
    assert_eq!(rows.len() as i64, projects, "every project listed");
    rows.into_iter()
        .filter(|(id, missing, status)| {
            status.as_deref() != Some("completed") || *missing != Some(expected_missing(*id))
        })
        .take(20)
        .collect()
}

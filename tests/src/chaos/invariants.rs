//! The invariants a schedule must leave behind once its faults stopped and the migration
//! converged. Each violation is a sentence naming the repository (or process) and what is wrong.
//!
//! The source is what the real registry (docker-registry serving the old layout) serves, never
//! Ferry's own reading of it.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use sqlx::{PgPool, Row};

use crate::RegistryServer;

/// Waits until no repository has migration work ahead (at most `bound`); returns the ones that
/// still had, with their states, when the bound ran out.
pub async fn wait_terminal(scheduler: &PgPool, bound: Duration) -> Vec<String> {
    let deadline = Instant::now() + bound;
    loop {
        let pending: Vec<(String, String)> = sqlx::query_as(
            "SELECT path, migration_state FROM container_repositories \
             WHERE migration_state = ANY($1) ORDER BY path",
        )
        .bind(&ferry_scheduler::state::MigrationState::PENDING[..])
        .fetch_all(scheduler)
        .await
        .unwrap_or_default();
        if pending.is_empty() || Instant::now() >= deadline {
            return pending
                .into_iter()
                .map(|(path, state)| format!("{path} not terminal after {bound:?}: {state}"))
                .collect();
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Both sides agree, nothing is left read-only, and no tags stand for a repository that is not
/// on the new platform. Returns the `import_complete` repositories, for [`registered_as_source`].
pub async fn sides_agree(
    scheduler: &PgPool,
    metadata: &PgPool,
    violations: &mut Vec<String>,
) -> Vec<String> {
    let states: BTreeMap<String, (String, Option<String>)> = sqlx::query(
        "SELECT path, migration_state, migration_skipped_reason FROM container_repositories",
    )
    .fetch_all(scheduler)
    .await
    .expect("scheduler states")
    .into_iter()
    .map(|row| {
        (
            row.get("path"),
            (
                row.get("migration_state"),
                row.get("migration_skipped_reason"),
            ),
        )
    })
    .collect();
    let statuses: BTreeMap<String, (String, i64)> = sqlx::query(
        "SELECT r.path, r.migration_status, \
                (SELECT count(*) FROM tags t WHERE t.repository_id = r.id) AS tags \
         FROM repositories r",
    )
    .fetch_all(metadata)
    .await
    .expect("metadata statuses")
    .into_iter()
    .map(|row| {
        (
            row.get("path"),
            (row.get("migration_status"), row.get("tags")),
        )
    })
    .collect();
    let mut complete = Vec::new();
    for (path, (status, tags)) in &statuses {
        if status.ends_with("_in_progress") {
            violations.push(format!("{path} left read-only or locked: {status}"));
        }
        if status != "import_complete" && *tags > 0 {
            violations.push(format!("{path} has {tags} tags but is {status}"));
        }
        if status == "import_complete" {
            complete.push(path.clone());
        }
    }
    for (path, (state, reason)) in &states {
        let done = state == "import_done" && reason.is_none();
        let status = statuses.get(path).map_or("no row", |(s, _)| s.as_str());
        if done != (status == "import_complete") {
            violations.push(format!(
                "{path}: the scheduler says {state} ({}), the metadata database {status}",
                reason.as_deref().unwrap_or("no reason")
            ));
        }
    }
    complete
}

/// Every `import_complete` repository holds exactly what the real registry serves from the old
/// layout: its tags and their digests, each manifest byte for byte (and nothing else), each
/// index's children, and every config and layer copied under `gitlab/` with its size and sha256.
pub async fn registered_as_source(
    registry: &RegistryServer,
    metadata: &PgPool,
    root: &Path,
    repositories: &[String],
    violations: &mut Vec<String>,
) {
    let mut blobs_checked = HashSet::new();
    for path in repositories {
        let mut source_tags = BTreeMap::new();
        for tag in registry.tags(path).await {
            if let Some(digest) = registry.manifest_digest(path, &tag).await {
                source_tags.insert(tag, digest);
            }
        }
        let tags: BTreeMap<String, String> = sqlx::query_as(
            "SELECT t.name, m.digest FROM tags t JOIN manifests m ON m.id = t.manifest_id \
             JOIN repositories r ON r.id = t.repository_id WHERE r.path = $1",
        )
        .bind(path)
        .fetch_all(metadata)
        .await
        .expect("tags")
        .into_iter()
        .collect();
        if tags != source_tags {
            violations.push(format!(
                "{path}: tags {tags:?}, the source serves {source_tags:?}"
            ));
        }
        let manifests: HashMap<String, Vec<u8>> = sqlx::query_as(
            "SELECT m.digest, m.payload FROM manifests m JOIN repositories r ON r.id = m.repository_id \
             WHERE r.path = $1",
        )
        .bind(path)
        .fetch_all(metadata)
        .await
        .expect("manifests")
        .into_iter()
        .collect();
        // The source's manifests: the tagged ones and, through indexes, their children.
        let mut wanted: Vec<String> = source_tags.values().cloned().collect();
        let mut seen = BTreeSet::new();
        while let Some(digest) = wanted.pop() {
            if !seen.insert(digest.clone()) {
                continue;
            }
            let Some(source) = registry.manifest(path, &digest).await else {
                violations.push(format!("{path}: the source does not serve {digest}"));
                continue;
            };
            let Some(payload) = manifests.get(&digest) else {
                violations.push(format!("{path}: manifest {digest} not registered"));
                continue;
            };
            if payload.as_slice() != source.as_bytes() {
                violations.push(format!(
                    "{path}: manifest {digest} differs from the source's"
                ));
                continue;
            }
            let parsed: serde_json::Value = serde_json::from_str(&source).expect("manifest JSON");
            let children = descriptors(&parsed["manifests"]);
            if !children.is_empty() {
                check_children(metadata, path, &digest, &children, violations).await;
                wanted.extend(children.into_iter().map(|(d, _)| d));
            }
            let mut blobs = descriptors(&parsed["layers"]);
            blobs.extend(descriptors(&serde_json::json!([parsed["config"]])));
            for (blob, size) in blobs {
                if blobs_checked.insert(blob.clone()) {
                    check_copy(root, &blob, size, violations);
                }
            }
        }
        let extra: Vec<&String> = manifests.keys().filter(|d| !seen.contains(*d)).collect();
        if !extra.is_empty() {
            violations.push(format!("{path}: manifests not in the source's: {extra:?}"));
        }
    }
}

/// `(digest, size)` of each descriptor in a JSON array (none when it is not one).
fn descriptors(list: &serde_json::Value) -> Vec<(String, u64)> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| Some((d["digest"].as_str()?.to_owned(), d["size"].as_u64()?)))
        .collect()
}

async fn check_children(
    metadata: &PgPool,
    path: &str,
    parent: &str,
    children: &[(String, u64)],
    violations: &mut Vec<String>,
) {
    let registered: BTreeSet<String> = sqlx::query_scalar(
        "SELECT c.digest FROM manifest_references mr \
         JOIN manifests p ON p.id = mr.parent_id JOIN manifests c ON c.id = mr.child_id \
         JOIN repositories r ON r.id = p.repository_id WHERE r.path = $1 AND p.digest = $2",
    )
    .bind(path)
    .bind(parent)
    .fetch_all(metadata)
    .await
    .expect("references")
    .into_iter()
    .collect();
    let expected: BTreeSet<String> = children.iter().map(|(d, _)| d.clone()).collect();
    if registered != expected {
        violations.push(format!(
            "{path}: index {parent} references {registered:?}, the source {expected:?}"
        ));
    }
}

fn check_copy(root: &Path, digest: &str, size: u64, violations: &mut Vec<String>) {
    let hex = digest.trim_start_matches("sha256:");
    let copy = root
        .join("gitlab/docker/registry/v2/blobs/sha256")
        .join(hex.get(..2).unwrap_or_default())
        .join(hex)
        .join("data");
    match std::fs::metadata(&copy) {
        Err(_) => violations.push(format!("blob {digest} not copied under gitlab/")),
        Ok(meta) if meta.len() != size => violations.push(format!(
            "blob {digest} copied with {} bytes, {size} expected",
            meta.len()
        )),
        Ok(_) => match crate::file_digest(&copy) {
            Ok(actual) if actual == digest => {}
            Ok(actual) => violations.push(format!("blob {digest} copied hashes to {actual}")),
            Err(error) => violations.push(format!("blob {digest} copy unreadable: {error}")),
        },
    }
}

/// What the services' JSON logs say about steps and fences: no step number of a repository was
/// accepted twice (two runners of one step), no repository completed two final imports, every
/// fencing token was taken by one scheduler incarnation only, and every step that incarnation
/// started carried its own token.
pub fn logs_agree(
    importer_logs: &[std::path::PathBuf],
    scheduler_logs: &[std::path::PathBuf],
    violations: &mut Vec<String>,
) {
    let mut accepted: HashMap<(String, u64), u32> = HashMap::new();
    let mut finals: HashMap<String, u32> = HashMap::new();
    for event in importer_logs.iter().flat_map(|file| events(file)) {
        let repository = event["repository"].as_str().unwrap_or_default().to_owned();
        match event["message"].as_str() {
            Some("import step accepted") => {
                let step = event["step"].as_u64().unwrap_or_default();
                *accepted.entry((repository, step)).or_default() += 1;
            }
            Some("import step ended") if event["status"] == "import_complete" => {
                let repository = event["span"]["repository"]
                    .as_str()
                    .map_or(repository, str::to_owned);
                *finals.entry(repository).or_default() += 1;
            }
            _ => {}
        }
    }
    for ((repository, step), n) in accepted {
        if n > 1 {
            violations.push(format!("{repository}: step {step} accepted {n} times"));
        }
    }
    for (repository, n) in finals {
        if n > 1 {
            violations.push(format!("{repository}: {n} final imports completed"));
        }
    }
    let mut holders: HashMap<u64, String> = HashMap::new();
    let mut started: Vec<(u64, String)> = Vec::new();
    for file in scheduler_logs {
        let incarnation = file.display().to_string();
        for event in events(file) {
            let fence = event["fence"].as_u64().unwrap_or_default();
            match event["message"].as_str() {
                Some("enqueue lease acquired") => {
                    if let Some(other) = holders.insert(fence, incarnation.clone()) {
                        violations
                            .push(format!("fence {fence} taken by {other} and {incarnation}"));
                    }
                }
                Some("step started") => started.push((fence, incarnation.clone())),
                _ => {}
            }
        }
    }
    for (fence, incarnation) in started {
        if holders.get(&fence) != Some(&incarnation) {
            violations.push(format!(
                "{incarnation} started a step under fence {fence}, held by {:?}",
                holders.get(&fence)
            ));
        }
    }
}

fn events(file: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

//! One importer running 100 steps at once against real PostgreSQL (whose default
//! `max_connections` is 100): the steps share a bounded pool (`FERRY_DB_MAX_CONNECTIONS` auto,
//! 32) and take turns to write, so none fails for want of a connection; a pool PostgreSQL could
//! never grant is refused at start-up, naming the setting. Steps that need the same blob at once
//! copy it once.

use std::sync::Arc;
use std::time::Duration;

use ferry_importer::config::auto_db_connections;
use ferry_importer::service::{Importer, StepLimits};
use ferry_importer::store::MetadataStore;
use ferry_proto::common::v1::{ImportType, MigrationStatus};
use ferry_shared::ids::Digest;
use ferry_shared::layout;
use ferry_tests::{GatedStore, LayoutWriter, fresh_database};

const STEPS: usize = 100;

/// An importer's limits with a slot for every step.
fn limits() -> StepLimits {
    StepLimits {
        max_concurrent_imports: STEPS,
        pre_import_timeout: Duration::from_secs(120),
        import_timeout: Duration::from_secs(120),
        copy_concurrency: 4,
        tag_concurrency: 4,
        cancel_poll: Duration::from_millis(200),
    }
}

/// Runs one step of every repository at once (each held at its first read until all are
/// running) and returns how each ended.
async fn all_at_once(
    importer: &Importer,
    paths: &[String],
    import_type: ImportType,
    gate: &tokio::sync::watch::Sender<bool>,
) -> Vec<(String, MigrationStatus, String)> {
    let _ = gate.send(false);
    let steps: Vec<_> = paths
        .iter()
        .map(|path| {
            let (importer, path) = (importer.clone(), path.clone());
            tokio::spawn(async move {
                let outcome = importer
                    .import_now(&path, import_type)
                    .await
                    .expect("started");
                (path, outcome.status, outcome.detail)
            })
        })
        .collect();
    ferry_tests::wait::wait_until("every step running", Duration::from_secs(60), async || {
        match importer.in_flight() {
            STEPS => Ok(()),
            running => Err(running),
        }
    })
    .await;
    let _ = gate.send(true);
    let mut ended = Vec::new();
    for step in steps {
        ended.push(step.await.expect("step task"));
    }
    ended
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_steps_at_once_share_a_bounded_pool_and_all_complete() {
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = LayoutWriter::new(dir.path());
    let paths: Vec<String> = (0..STEPS).map(|i| format!("many/p{i}/app")).collect();
    let mut tags = Vec::new();
    for (i, path) in paths.iter().enumerate() {
        tags.push((path, "v1", layout.image(path, "v1", &format!("many {i}"))));
        tags.push((
            path,
            "v2",
            layout.image(path, "v2", &format!("many {i} again")),
        ));
    }
    let pool = auto_db_connections(STEPS as u64);
    assert_eq!(pool, 32);
    let db = MetadataStore::connect(&fresh_database("many_steps").await, pool)
        .await
        .expect("db");
    db.migrate().await.expect("migrate");
    assert!(
        db.connection_limit_problem()
            .await
            .expect("limits")
            .is_none()
    );
    let storage =
        ferry_shared::storage::open(&format!("file://{}", dir.path().display())).expect("storage");
    let (gated, gate) = GatedStore::new(storage);
    let importer = Importer::new(Arc::new(gated), db, None, limits());
    for (import_type, complete) in [
        (ImportType::Pre, MigrationStatus::PreImportComplete),
        (ImportType::Final, MigrationStatus::ImportComplete),
    ] {
        if import_type == ImportType::Final {
            // Every tag's link written again (same target, a new version): the final imports
            // read them instead of taking their digests from the pre-imports' record, and so
            // wait at the gate until all 100 run.
            for (path, tag, manifest) in &tags {
                layout.tag_link(path, tag, manifest);
            }
        }
        for (path, status, detail) in all_at_once(&importer, &paths, import_type, &gate).await {
            assert_eq!(status, complete, "{path}: {detail}");
        }
    }
}

/// 100 pre-imports at once of repositories sharing a base layer, none registered yet: the first
/// step to reach the base layer copies it and the other 99 wait for that copy instead of
/// sending their own (which the bucket would refuse, each refusal then claimed and looked at).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steps_needing_the_same_blob_at_once_copy_it_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let layout = LayoutWriter::new(dir.path());
    let base = "a base layer every repository shares".repeat(40);
    let paths: Vec<String> = (0..STEPS).map(|i| format!("shared/p{i}/app")).collect();
    for (i, path) in paths.iter().enumerate() {
        let config = format!(r#"{{"architecture":"amd64","os":"linux","seed":"{i}"}}"#);
        let own = format!("the layer of repository {i}").repeat(30);
        layout.image_of(
            path,
            "v1",
            config.as_bytes(),
            &[base.as_bytes(), own.as_bytes()],
        );
    }
    let db = MetadataStore::connect(&fresh_database("shared_copy").await, 32)
        .await
        .expect("db");
    db.migrate().await.expect("migrate");
    let storage =
        ferry_shared::storage::open(&format!("file://{}", dir.path().display())).expect("storage");
    let base_key = Digest::of(base.as_bytes());
    // The base layer's copies wait at the gate until every step has asked for it.
    let (gated, gate) = GatedStore::on_key(storage, layout::old_blob_key(&base_key));
    let gated = Arc::new(gated);
    let importer = Importer::new(Arc::clone(&gated) as _, db, None, limits());
    let steps: Vec<_> = (paths.iter().cloned())
        .map(|path| {
            let importer = importer.clone();
            tokio::spawn(async move { importer.import_now(&path, ImportType::Pre).await })
        })
        .collect();
    // Each step starts its three copies together: once all configs and own layers were asked
    // for, every step has joined the base layer's copy.
    let base_dst = layout::new_blob_key(&base_key);
    ferry_tests::wait_until(
        "every step at its copies",
        Duration::from_secs(60),
        async || match gated.copies() - gated.copies_to(&base_dst) {
            asked if asked == 2 * STEPS => Ok(()),
            asked => Err(asked),
        },
    )
    .await;
    let _ = gate.send(true);
    for step in steps {
        let outcome = step.await.expect("step task").expect("started");
        assert_eq!(
            outcome.status,
            MigrationStatus::PreImportComplete,
            "{}",
            outcome.detail
        );
    }
    assert_eq!(
        gated.copies_to(&base_dst),
        1,
        "the shared layer copied once"
    );
    assert_eq!(
        gated.copies(),
        1 + 2 * STEPS,
        "every other blob copied once"
    );
    assert!(
        dir.path().join(&base_dst).exists(),
        "the base layer is under the new prefix"
    );
}

#[tokio::test]
async fn a_pool_postgresql_could_never_grant_is_refused_at_start_up() {
    let database = fresh_database("pool_limit").await;
    let output =
        std::process::Command::new(ferry_tests::processes::bin_dir().join("ferry-importer"))
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("FERRY_METADATA_DATABASE_URL", &database)
            .env("FERRY_STORAGE_URL", "file:///tmp")
            .env("FERRY_SCHEDULER_URL", "http://127.0.0.1:1")
            .env("FERRY_LISTEN_ADDR", "127.0.0.1:0")
            .env("FERRY_METRICS_ADDR", "off")
            .env("FERRY_DB_MAX_CONNECTIONS", "5000")
            .output()
            .expect("ferry-importer runs (make test builds it)");
    assert!(!output.status.success(), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("FERRY_DB_MAX_CONNECTIONS is 5000") && stderr.contains("max_connections"),
        "{stderr}"
    );
}

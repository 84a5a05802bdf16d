//! `ferryctl gc`: abandoned copies under `gitlab/` (left by steps that never committed) are
//! listed and removed, and nothing else: not a registered copy, not a young one, not the old
//! layout. The race with a step that finds an old unregistered copy in place and registers it is
//! replayed in each order, deterministically, through a store that holds one call until the test
//! lets it go: the step never ends with a registered blob whose copy is missing. On local disk,
//! and on the GCS emulator, where the delete's generation precondition is real.
//!
//! Ages come from the store (local: the inode's change time, which nothing sets back), so the
//! tests use importers with short step time limits and a window just above them, and wait for
//! the abandoned copies to age.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use sqlx::PgPool;
use tokio::sync::{Notify, mpsc};

use ferry_importer::service::{ImportService, Importer, StepLimits};
use ferry_importer::store::MetadataStore;
use ferry_proto::common::v1::{GarbageCounts, ImportType};
use ferry_proto::importer::v1::collect_garbage_event::Event;
use ferry_proto::importer::v1::{CollectGarbageEvent, CollectGarbageSummary};
use ferry_shared::ids::Digest;
use ferry_shared::layout;
use ferry_shared::storage::{
    BlobStore, CopyOutcome, DeleteOutcome, ListOptions, ListPage, ObjectMeta, ObjectReader,
    StorageError,
};
use ferry_tests::buckets::{Bucket, GcsBucket};
use ferry_tests::gcs_emulator::GcsEmulator;
use ferry_tests::{Cluster, ClusterOptions, LayoutWriter, fresh_database, wait_until};

/// The importers' step time limits in these tests, seconds.
const STEP_SECS: u64 = 4;
/// The window: just longer than the step time limits.
const WINDOW_SECS: u64 = STEP_SECS + 1;

/// Waits until the file at `path` is older than the window (by its inode change time, as the
/// local driver measures it), with half a second to spare.
async fn age_past_window(path: &Path) {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).expect("the copy exists");
    let changed = SystemTime::UNIX_EPOCH + Duration::from_secs(meta.ctime() as u64);
    let ready = changed + Duration::from_millis(WINDOW_SECS * 1000 + 1500);
    if let Ok(wait) = ready.duration_since(SystemTime::now()) {
        tokio::time::sleep(wait).await;
    }
}

/// Every file under `dir`, by path relative to it, with its content.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).expect("read_dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let relative = path.strip_prefix(root).expect("under root").to_path_buf();
                out.insert(relative, std::fs::read(&path).expect("read"));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// Writes `data` under the new layout's key of its digest, as a step's copy would, but without
/// any registration: an abandoned copy. Returns its digest.
fn abandoned_copy(root: &Path, data: &[u8]) -> Digest {
    let digest = Digest::of(data);
    let path = root.join(layout::new_blob_key(&digest));
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(&path, data).expect("write");
    digest
}

/// The abandoned bytes the importer whose collection ended last reports (as the dashboard reads
/// them).
async fn abandoned_after_last_collection(cluster: &Cluster) -> f64 {
    let ended = (cluster.importers_metric("ferry_gc_last_complete_timestamp_seconds")).await;
    let abandoned = cluster.importers_metric("ferry_gc_abandoned_bytes").await;
    let last = (0..ended.len())
        .max_by(|a, b| ended[*a].total_cmp(&ended[*b]))
        .expect("importers");
    assert!(ended[last] > 0.0, "a collection ended: {ended:?}");
    abandoned[last]
}

/// Runs `ferryctl gc ARGS --json`; returns whether it succeeded and its JSON report.
fn gc(cluster: &Cluster, args: &[&str]) -> (bool, serde_json::Value) {
    let output = cluster.ferryctl(&[&["gc"], args, &["--json"]].concat());
    let report = serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
        panic!("ferryctl gc {args:?}: no JSON report ({error}): {output:?}")
    });
    (output.status.success(), report)
}

fn candidate_digests(report: &serde_json::Value) -> Vec<String> {
    let listed = report["candidates"].as_array().expect("candidates");
    listed
        .iter()
        .map(|c| c["digest"].as_str().expect("digest").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_removes_exactly_the_abandoned_copy_and_nothing_else_on_local_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let writer = LayoutWriter::new(root);
    writer.registry("gc", 3, 2);
    let abandoned_bytes = b"a layer a killed step copied".repeat(40);
    let abandoned = abandoned_copy(root, &abandoned_bytes);
    let abandoned_path = root.join(layout::new_blob_key(&abandoned));
    let options = ClusterOptions {
        importers: 2,
        step_timeout_secs: STEP_SECS,
        ..ClusterOptions::default()
    };
    let cluster = Cluster::start_with(format!("file://{}", root.display()), options).await;
    assert_eq!(cluster.inventory().await.repositories_registered, 3);
    cluster.migrate(Duration::from_secs(120)).await;
    // The migration's own copies age past the window too: only their registration keeps them.
    tokio::time::sleep(Duration::from_millis(WINDOW_SECS * 1000 + 1500)).await;
    age_past_window(&abandoned_path).await;
    let old_layout = snapshot(&root.join("docker"));
    let before = snapshot(&root.join("gitlab"));

    // A window not longer than the importers' step time limits is refused, naming the field.
    let output = cluster.ferryctl(&["gc", "--older-than", &format!("{STEP_SECS}s")]);
    assert!(!output.status.success(), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("older_than_secs"), "{stderr}");

    let window = format!("{WINDOW_SECS}s");
    let (ok, report) = gc(&cluster, &["--dry-run", "--older-than", &window]);
    assert!(ok, "{report:#}");
    assert_eq!(
        candidate_digests(&report),
        [abandoned.to_string()],
        "{report:#}"
    );
    assert_eq!(report["candidates"][0]["removed"], false, "{report:#}");
    assert_eq!(report["candidate_count"], 1, "{report:#}");
    assert_eq!(report["removed"], 0, "{report:#}");
    assert_eq!(report["young"], 0, "{report:#}");
    assert!(report["registered"].as_u64() > Some(0), "{report:#}");
    assert_eq!(report["older_than_secs"], WINDOW_SECS, "{report:#}");
    assert_eq!(
        before,
        snapshot(&root.join("gitlab")),
        "a dry run removes nothing"
    );

    // The same dry run as an operator reads it: each candidate as it comes, then the summary.
    let output = cluster.ferryctl(&["gc", "--dry-run", "--older-than", &window]);
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    let key = layout::new_blob_key(&abandoned);
    assert!(
        (text.lines()).any(|line| line.starts_with("would remove") && line.contains(&key)),
        "{text}"
    );
    assert!(
        text.contains("\nAbandoned copies (dry run: nothing removed)\n"),
        "{text}"
    );
    assert!(text.contains("\n  candidates      1 ("), "{text}");
    assert!(!text.contains("\n  removed "), "{text}");
    // Both dry runs on the importers' metrics, with what they found.
    let dry_runs = "ferry_gc_runs_total{mode=\"dry_run\",result=\"complete\"}";
    assert_eq!(cluster.importers_metric_sum(dry_runs).await, 2.0);
    assert_eq!(
        abandoned_after_last_collection(&cluster).await,
        abandoned_bytes.len() as f64
    );

    // A copy of a step still running: unregistered, but younger than the window.
    let young = abandoned_copy(root, b"a layer a running step just copied");
    let young_path = root.join(layout::new_blob_key(&young));
    let before = snapshot(&root.join("gitlab"));
    let (ok, report) = gc(&cluster, &["--older-than", &window]);
    assert!(ok, "{report:#}");
    assert_eq!(report["young"], 1, "{report:#}");
    assert_eq!(
        candidate_digests(&report),
        [abandoned.to_string()],
        "{report:#}"
    );
    assert_eq!(report["removed"], 1, "{report:#}");
    assert_eq!(report["bytes_removed"], abandoned_bytes.len(), "{report:#}");
    assert!(!abandoned_path.exists(), "the abandoned copy is removed");
    assert!(young_path.exists(), "the young copy is kept");
    for (series, value) in [
        (
            "ferry_gc_runs_total{mode=\"remove\",result=\"complete\"}",
            1.0,
        ),
        ("ferry_gc_removed_objects_total", 1.0),
        ("ferry_gc_removed_bytes_total", abandoned_bytes.len() as f64),
    ] {
        assert_eq!(
            cluster.importers_metric_sum(series).await,
            value,
            "{series}"
        );
    }
    assert_eq!(abandoned_after_last_collection(&cluster).await, 0.0);
    let mut expected = before;
    expected.retain(|path, _| !root.join("gitlab").join(path).eq(&abandoned_path));
    assert_eq!(
        expected,
        snapshot(&root.join("gitlab")),
        "only the abandoned copy went"
    );
    assert_eq!(
        old_layout,
        snapshot(&root.join("docker")),
        "the old layout is untouched"
    );

    // Every registered copy is still there, and the migration still matches its source.
    let db = PgPool::connect(&cluster.metadata_database_url)
        .await
        .expect("metadata database");
    let copied: Vec<String> = sqlx::query_scalar("SELECT digest FROM blobs WHERE copied")
        .fetch_all(&db)
        .await
        .expect("copied blobs");
    assert!(!copied.is_empty());
    for digest in &copied {
        let digest = Digest::parse(digest).expect("digest");
        assert!(
            root.join(layout::new_blob_key(&digest)).exists(),
            "{digest}"
        );
    }
    let output = cluster.ferryctl(&["verify", "--all", "--json"]);
    let verified: serde_json::Value = serde_json::from_slice(&output.stdout).expect("verify JSON");
    assert!(output.status.success(), "{verified:#}");
    assert_eq!(verified["matched"], 3, "{verified:#}");

    // Nothing left to collect once the young copy is gone (its step registered it, or it will
    // be old enough to collect itself).
    std::fs::remove_file(&young_path).expect("remove the young copy");
    let (ok, report) = gc(&cluster, &["--older-than", &window]);
    assert!(ok, "{report:#}");
    assert_eq!(report["candidate_count"], 0, "{report:#}");
}

/// Where [`Interleave`] holds a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Point {
    /// After a copy to the key answered (the step found the destination in place).
    AfterCopy,
    /// Before a stat of the key (the step's second look, after its claim).
    BeforeStat,
    /// Before a delete of the key (gc holds the digest's lock).
    BeforeDelete,
}

/// A store that holds the first call at a chosen point for a chosen key until the test lets it
/// go, and says when one is held.
#[derive(Debug)]
struct Interleave {
    inner: Arc<dyn BlobStore>,
    armed: Mutex<Option<(Point, String)>>,
    arrived: mpsc::UnboundedSender<Point>,
    release: Notify,
}

impl Interleave {
    async fn hold(&self, point: Point, key: &str) {
        let matches = {
            let mut armed = self.armed.lock().expect("lock");
            let hit = armed.as_ref().is_some_and(|(p, k)| *p == point && k == key);
            if hit {
                *armed = None;
            }
            hit
        };
        if matches {
            let _ = self.arrived.send(point);
            self.release.notified().await;
        }
    }
}

#[async_trait]
impl BlobStore for Interleave {
    async fn list(&self, prefix: &str, options: &ListOptions) -> Result<ListPage, StorageError> {
        self.inner.list(prefix, options).await
    }
    async fn stat(&self, key: &str) -> Result<Option<ObjectMeta>, StorageError> {
        self.hold(Point::BeforeStat, key).await;
        self.inner.stat(key).await
    }
    async fn read(&self, key: &str, max_bytes: u64) -> Result<Bytes, StorageError> {
        self.inner.read(key, max_bytes).await
    }
    async fn open_read(&self, key: &str) -> Result<Option<ObjectReader>, StorageError> {
        self.inner.open_read(key).await
    }
    async fn copy(
        &self,
        src: &str,
        dst: &str,
        expected: Option<&Digest>,
    ) -> Result<CopyOutcome, StorageError> {
        let outcome = self.inner.copy(src, dst, expected).await;
        self.hold(Point::AfterCopy, dst).await;
        outcome
    }
    async fn delete(&self, key: &str, version: &str) -> Result<DeleteOutcome, StorageError> {
        self.hold(Point::BeforeDelete, key).await;
        self.inner.delete(key, version).await
    }
    async fn persist(&self) -> Result<(), StorageError> {
        self.inner.persist().await
    }
    fn url(&self) -> String {
        format!("interleave+{}", self.inner.url())
    }
}

/// An importer (domain service) over `storage` with short step time limits.
async fn importer_over(storage: Arc<dyn BlobStore>) -> (Importer, PgPool) {
    let url = fresh_database("gc").await;
    let db = MetadataStore::connect(&url, 8).await.expect("connect");
    db.migrate().await.expect("migrate");
    let limits = StepLimits {
        max_concurrent_imports: 2,
        pre_import_timeout: Duration::from_secs(STEP_SECS),
        import_timeout: Duration::from_secs(STEP_SECS),
        copy_concurrency: 2,
        tag_concurrency: 2,
        cancel_poll: Duration::from_millis(200),
    };
    let pool = PgPool::connect(&url).await.expect("pool");
    (Importer::new(storage, db, None, limits), pool)
}

/// Runs a collection on `importer` to its end; returns its summary.
async fn collect(importer: &Importer, dry_run: bool) -> CollectGarbageSummary {
    let mut events = importer
        .collect_garbage(WINDOW_SECS, dry_run)
        .await
        .expect("collection accepted");
    while let Some(CollectGarbageEvent { event }) = events.recv().await {
        if let Some(Event::Done(summary)) = event {
            assert_eq!(summary.error, "", "{summary:?}");
            return summary;
        }
    }
    panic!("the collection ended without a summary");
}

fn counts(summary: &CollectGarbageSummary) -> GarbageCounts {
    summary.counts.expect("counts")
}

/// Waits for the step on `path` to end; returns its status.
async fn step_end(pool: &PgPool, path: &str) -> String {
    wait_until(
        &format!("the step on {path} to end"),
        Duration::from_secs(30),
        async || {
            let status: String =
                sqlx::query_scalar("SELECT migration_status FROM repositories WHERE path = $1")
                    .bind(path)
                    .fetch_one(pool)
                    .await
                    .map_err(|e| e.to_string())?;
            if status.ends_with("_in_progress") {
                Err(status)
            } else {
                Ok(status)
            }
        },
    )
    .await
}

/// One race: a repository whose layer has an old, unregistered copy under `gitlab/` already.
struct Race {
    _dir: tempfile::TempDir,
    root: PathBuf,
    store: Arc<Interleave>,
    arrived: mpsc::UnboundedReceiver<Point>,
    importer: Importer,
    pool: PgPool,
    layer: Digest,
}

const PATH: &str = "race/project/app";

impl Race {
    async fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().to_path_buf();
        let (_, _, layer) = LayoutWriter::new(&root).image_parts(PATH, "v1", "race");
        let layer = Digest::parse(&layer).expect("digest");
        let layer_bytes = std::fs::read(root.join(layout::old_blob_key(&layer))).expect("layer");
        assert_eq!(abandoned_copy(&root, &layer_bytes), layer);
        age_past_window(&root.join(layout::new_blob_key(&layer))).await;
        let inner =
            ferry_shared::storage::open(&format!("file://{}", root.display())).expect("storage");
        let (arrived_tx, arrived) = mpsc::unbounded_channel();
        let store = Arc::new(Interleave {
            inner,
            armed: Mutex::new(None),
            arrived: arrived_tx,
            release: Notify::new(),
        });
        let (importer, pool) = importer_over(Arc::clone(&store) as Arc<dyn BlobStore>).await;
        Self {
            _dir: dir,
            root,
            store,
            arrived,
            importer,
            pool,
            layer,
        }
    }

    fn layer_key(&self) -> String {
        layout::new_blob_key(&self.layer)
    }

    fn arm(&self, point: Point) {
        *self.store.armed.lock().expect("lock") = Some((point, self.layer_key()));
    }

    async fn held(&mut self, point: Point) {
        let held = tokio::time::timeout(Duration::from_secs(30), self.arrived.recv()).await;
        assert_eq!(held.expect("a call is held in time"), Some(point));
    }

    fn release(&self) {
        self.store.release.notify_one();
    }

    async fn start_step(&self) {
        self.importer
            .start_import(PATH, ImportType::Pre, 0, 0)
            .await
            .expect("start");
    }

    /// The step ended complete, with the layer registered as copied and its copy whole.
    async fn assert_registered_and_present(&self) {
        assert_eq!(step_end(&self.pool, PATH).await, "pre_import_complete");
        let copied: bool = sqlx::query_scalar("SELECT copied FROM blobs WHERE digest = $1")
            .bind(self.layer.as_str())
            .fetch_one(&self.pool)
            .await
            .expect("the layer is registered");
        assert!(copied);
        let path = self.root.join(self.layer_key());
        let digest = ferry_tests::file_digest(&path).expect("the registered copy exists");
        assert_eq!(digest, self.layer.to_string());
    }
}

/// gc removes the old copy after the step found it in place but before the step's claim: the
/// step's second look finds it gone and copies it anew.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_removed_between_the_steps_copy_and_its_claim_is_copied_again() {
    let mut race = Race::new().await;
    race.arm(Point::AfterCopy);
    race.start_step().await;
    race.held(Point::AfterCopy).await;
    let summary = collect(&race.importer, false).await;
    assert_eq!(counts(&summary).removed, 1, "{summary:?}");
    assert!(!race.root.join(race.layer_key()).exists());
    race.release();
    race.assert_registered_and_present().await;
}

/// The step claims the old copy before gc looks: gc keeps it, and once the step has committed,
/// it is registered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claimed_copy_is_kept() {
    let mut race = Race::new().await;
    race.arm(Point::BeforeStat);
    race.start_step().await;
    race.held(Point::BeforeStat).await;
    let summary = collect(&race.importer, false).await;
    let found = counts(&summary);
    assert_eq!((found.removed, found.claimed), (0, 1), "{summary:?}");
    assert!(race.root.join(race.layer_key()).exists());
    race.release();
    race.assert_registered_and_present().await;
    let summary = collect(&race.importer, false).await;
    let found = counts(&summary);
    assert_eq!((found.removed, found.candidates), (0, 0), "{summary:?}");
    assert!(found.registered >= 1, "{summary:?}");
    race.assert_registered_and_present().await;
}

/// gc holds the digest's lock, about to delete, when the step finds the copy in place: the
/// step's claim waits for the removal to end, and its second look then finds the copy gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_waits_for_a_removal_in_progress() {
    let mut race = Race::new().await;
    race.arm(Point::BeforeDelete);
    let importer = race.importer.clone();
    let collection = tokio::spawn(async move { collect(&importer, false).await });
    race.held(Point::BeforeDelete).await;
    race.start_step().await;
    // The step's claim waits on the lock gc holds.
    wait_until(
        "the step's claim to wait for gc's lock",
        Duration::from_secs(30),
        async || {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted \
                 AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            )
            .fetch_one(&race.pool)
            .await
            .map_err(|e| e.to_string())?;
            if waiting >= 1 {
                Ok(())
            } else {
                Err(format!("{waiting} waiting"))
            }
        },
    )
    .await;
    race.release();
    let summary = collection.await.expect("collection");
    assert_eq!(counts(&summary).removed, 1, "{summary:?}");
    race.assert_registered_and_present().await;
}

/// On the GCS emulator, which honours the delete's generation precondition: an abandoned copy
/// goes; a registered one, a young one, a key that is not a blob's data and the old layout stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_removes_an_abandoned_copy_on_the_gcs_emulator() {
    let emulator = GcsEmulator::start(Duration::ZERO);
    let bucket = GcsBucket::at(&emulator.endpoint()).await;
    let abandoned = Digest::of(b"abandoned");
    let registered = Digest::of(b"registered");
    let young = Digest::of(b"young");
    let stray = format!("{}/blobs/sha256/ab/not-a-blob/data", layout::NEW_ROOT);
    bucket
        .put(&layout::old_blob_key(&abandoned), b"abandoned")
        .await;
    bucket
        .put(&layout::new_blob_key(&abandoned), b"abandoned")
        .await;
    bucket
        .put(&layout::new_blob_key(&registered), b"registered")
        .await;
    bucket.put(&stray, b"stray").await;
    let storage: Arc<dyn BlobStore> = Arc::from(bucket.store(""));
    let (importer, pool) = importer_over(Arc::clone(&storage)).await;
    sqlx::query("INSERT INTO blobs (digest, size, media_type, copied) VALUES ($1, 10, 'x', true)")
        .bind(registered.as_str())
        .execute(&pool)
        .await
        .expect("register");
    tokio::time::sleep(Duration::from_millis(WINDOW_SECS * 1000 + 1500)).await;
    bucket.put(&layout::new_blob_key(&young), b"young").await;

    let summary = collect(&importer, true).await;
    let found = counts(&summary);
    assert_eq!((found.candidates, found.removed), (1, 0), "{summary:?}");
    assert!(
        bucket
            .get(&layout::new_blob_key(&abandoned))
            .await
            .is_some()
    );

    let summary = collect(&importer, false).await;
    let found = counts(&summary);
    assert_eq!(found.listed, 4, "{summary:?}");
    assert_eq!(found.other_keys, 1, "{summary:?}");
    assert_eq!(found.young, 1, "{summary:?}");
    assert_eq!(found.registered, 1, "{summary:?}");
    assert_eq!((found.removed, found.bytes_removed), (1, 9), "{summary:?}");
    assert_eq!(bucket.get(&layout::new_blob_key(&abandoned)).await, None);
    for kept in [
        layout::new_blob_key(&registered),
        layout::new_blob_key(&young),
        stray,
        layout::old_blob_key(&abandoned),
    ] {
        assert!(bucket.get(&kept).await.is_some(), "{kept} is kept");
    }
}

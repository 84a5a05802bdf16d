//! The verification pass: a step commits only if every copied blob is under `gitlab/` with the
//! size its manifest declares, and a final import only if the tags it wrote are the source's tags
//! at commit time. Real PostgreSQL.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use async_trait::async_trait;
use bytes::Bytes;

use ferry_proto::common::v1::ImportType;
use ferry_shared::ids::Digest;
use ferry_shared::storage::{
    BlobStore, CopyOutcome, ListOptions, ListPage, ObjectMeta, StorageError,
};
use ferry_tests::ImporterHarness;

/// Once `replacement` is set, moves the link at `key` from the second listing that shows it on:
/// that listing gives it a new version, and reads then serve `replacement`. A tag moved (pushed
/// to) between the plan and the commit of a final import.
#[derive(Debug)]
struct MovingTag {
    inner: Arc<dyn BlobStore>,
    key: String,
    replacement: std::sync::Mutex<Option<Bytes>>,
    listings: AtomicU32,
    moved: AtomicBool,
}

#[async_trait]
impl BlobStore for MovingTag {
    async fn list(&self, prefix: &str, options: &ListOptions) -> Result<ListPage, StorageError> {
        let mut page = self.inner.list(prefix, options).await?;
        let armed = self.replacement.lock().expect("lock").is_some();
        if let Some(link) = page.objects.iter_mut().find(|o| armed && o.key == self.key)
            && self.listings.fetch_add(1, Ordering::SeqCst) >= 1
        {
            link.version = Some("moved".into());
            self.moved.store(true, Ordering::SeqCst);
        }
        Ok(page)
    }
    async fn stat(&self, key: &str) -> Result<Option<ObjectMeta>, StorageError> {
        self.inner.stat(key).await
    }
    async fn read(&self, key: &str, max_bytes: u64) -> Result<Bytes, StorageError> {
        if key == self.key
            && self.moved.load(Ordering::SeqCst)
            && let Some(replacement) = self.replacement.lock().expect("lock").clone()
        {
            return Ok(replacement);
        }
        self.inner.read(key, max_bytes).await
    }
    async fn open_read(
        &self,
        key: &str,
    ) -> Result<Option<ferry_shared::storage::ObjectReader>, StorageError> {
        self.inner.open_read(key).await
    }
    async fn copy(
        &self,
        src: &str,
        dst: &str,
        expected: Option<&Digest>,
    ) -> Result<CopyOutcome, StorageError> {
        self.inner.copy(src, dst, expected).await
    }
    async fn delete(
        &self,
        key: &str,
        version: &str,
    ) -> Result<ferry_shared::storage::DeleteOutcome, StorageError> {
        self.inner.delete(key, version).await
    }
    fn url(&self) -> String {
        self.inner.url()
    }
}

#[tokio::test]
async fn a_blob_whose_size_differs_from_its_manifest_fails_the_step() {
    let h = ImporterHarness::new().await;
    let layout = h.layout();
    let path = "group/project/sizes";
    let config = layout.blob(br#"{"os":"linux"}"#);
    let layer = layout.blob(b"fourteen bytes");
    for blob in [&config, &layer] {
        layout.link_layer(path, blob);
    }
    // The layer's content is right (its digest matches) but the manifest declares 99 bytes.
    let manifest = layout.manifest((&config, 14), &[(&layer, 99)]);
    layout.link_revision(path, &manifest);
    layout.tag_link(path, "v1", &manifest);
    let (status, error) = h.run(path, ImportType::Pre).await;
    assert_eq!(status, "pre_import_failed");
    let error = error.expect("reason");
    assert!(error.starts_with("verification failed:"), "{error}");
    assert!(
        error.contains(&format!(
            "blob {layer} is 14 bytes under gitlab/ but manifest {manifest} declares 99"
        )),
        "{error}"
    );
    assert_eq!(h.count("manifests", path).await, 0);
}

#[tokio::test]
async fn a_tag_moved_during_the_final_import_fails_it_and_writes_no_tags() {
    let path = "group/project/moving";
    let key = format!("docker/registry/v2/repositories/{path}/_manifests/tags/v1/current/link");
    let moving = Arc::new(std::sync::Mutex::new(None::<Arc<MovingTag>>));
    let slot = Arc::clone(&moving);
    let h = ImporterHarness::with_storage(move |inner| {
        let store = Arc::new(MovingTag {
            inner,
            key,
            replacement: std::sync::Mutex::new(None),
            listings: AtomicU32::new(0),
            moved: AtomicBool::new(false),
        });
        *slot.lock().unwrap() = Some(Arc::clone(&store));
        store
    })
    .await;
    let layout = h.layout();
    let first = layout.image(path, "v1", "first");
    let second = layout.image(path, "v2", "second");
    assert_eq!(h.run(path, ImportType::Pre).await.0, "pre_import_complete");

    // From now on the plan sees v1 unchanged since the pre-import read it (-> first), and the
    // check before the commit lists it moved and reads v1 -> second.
    let store = moving.lock().unwrap().clone().expect("store");
    *store.replacement.lock().unwrap() = Some(Bytes::from(second.clone()));
    let (status, error) = h.run(path, ImportType::Final).await;
    assert_eq!(status, "import_failed");
    let error = error.expect("reason");
    assert_eq!(
        error,
        format!("verification failed: tag v1 is {first} in the database but {second} in storage")
    );
    assert_eq!(h.count("tags", path).await, 0, "all tags or none");
}
